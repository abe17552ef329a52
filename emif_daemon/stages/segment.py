"""Segment: every PNG under UPSCALED_IMAGES/ → a folder of RGBA cut-outs under SEGMENTS/.

The model runs in a child process owned by this stage (segment_model.py and sam_decoder.py,
the only modules that import torch), loaded once and kept, restarted if it dies and recycled
after `segment.recycle_after` images: Segment Anything on MPS leaks memory across images, and a
crash in it must never take the daemon down. Events the child reports on the way (its
out-of-memory retries, docs/segment.md#out-of-memory) are logged here, in the daemon.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
from pathlib import Path
from typing import Any

from emif_daemon.config.schema import SegmentConfig
from emif_daemon.engine.stage import Discovery, Item, StageBase, StageContext, StageResult, Work
from emif_daemon.errors import PermanentItemError, Shutdown, StageUnavailable, TransientError
from emif_daemon.logs import get_logger
from emif_daemon.share.atomic import atomic_write_json, building_dir, publish_dir
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.layout import segment_output
from emif_daemon.stages.image_files import PngTreeDiscovery, read_source_png, sha256, sha256_file
from emif_daemon.stages.segment_spec import ModelSpec

__all__ = ["ModelProcess", "ModelSpec", "SegmentStage", "checkpoint_problem"]

DOWNLOAD_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# Meta publishes no sizes; these agree across many third-party pins (docs/segment.md#checkpoints).
CHECKPOINTS = {
    "vit_h": ("sam_vit_h_4b8939.pth", 2_564_550_879),
    "vit_l": ("sam_vit_l_0b3195.pth", 1_249_524_607),
    "vit_b": ("sam_vit_b_01ec64.pth", 375_042_383),
}
READY_TIMEOUT_S = 600.0  # loading vit_h from a network share can take minutes


def child_main(conn: Any, spec: ModelSpec) -> None:
    """Entry point of the model process; torch is imported here, never in the daemon."""
    from emif_daemon.stages.segment_model import serve  # noqa: PLC0415

    serve(conn, spec)


def checkpoint_problem(path: Path, model_type: str) -> str | None:
    """Why the checkpoint cannot be used, naming the path and where to get the right file."""
    name, size = CHECKPOINTS[model_type]
    where = (
        f"download {name} (model_type {model_type}) from {DOWNLOAD_URL}{name} and set "
        "segment.checkpoint to its path, or set segment.enabled = false"
    )
    try:
        actual = path.stat().st_size
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return f"segment checkpoint {path} not found: {where}"
    except OSError as exc:
        return f"segment checkpoint {path} cannot be read ({exc.strerror}): {where}"
    if path.name == name and actual != size:
        return (
            f"segment checkpoint {path} is {actual} bytes, {name} has {size}: the download is "
            f"incomplete; {where}"
        )
    return None


class ModelProcess:
    """The child process holding the model; one request at a time."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._proc: Any = None
        self._conn: Any = None
        self.served = 0
        self.device = ""
        self.log = get_logger()

    def _start(self, check: Any) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=child_main, args=(child, self.spec), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        kind, detail = self._receive(check, READY_TIMEOUT_S)
        if kind == "unavailable":
            self.close()
            raise StageUnavailable(detail)
        self.device = detail
        self.served = 0
        self.log.info("segment_model_loaded", device=detail, pid=self._proc.pid)

    def _receive(self, check: Any, timeout: float) -> tuple[str, Any]:
        """Wait for the child's answer, checking for shutdown and for its death; events the
        child reports on the way, ("log", event, fields), go to the daemon's log."""
        waited = 0.0
        while True:
            while not self._conn.poll(0.2):
                waited += 0.2
                try:
                    check()
                except (Shutdown, Exception):
                    self.close()  # a segmentation in flight cannot be interrupted otherwise
                    raise
                if not self._proc.is_alive() or waited > timeout:
                    code = self._proc.exitcode
                    self.close()
                    raise TransientError(f"the segment model process died (exit code {code})")
            try:
                message = self._conn.recv()
            except EOFError as exc:
                self.close()
                raise TransientError("the segment model process died mid-answer") from exc
            if message[0] != "log":
                return message  # type: ignore[no-any-return]
            _, event, fields = message
            self.log.warning(event, **fields)

    def run(self, source: Path, out_dir: Path, check: Any, recycle_after: int) -> dict[str, Any]:
        if self._proc is None or not self._proc.is_alive():
            self._start(check)
        self._conn.send((str(source), str(out_dir)))
        kind, detail = self._receive(check, float("inf"))
        self.served += 1
        if self.served >= recycle_after:
            self.log.info("segment_model_recycled", images=self.served)
            self.close()
        if kind == "permanent":
            raise PermanentItemError(detail)
        if kind == "transient":
            raise TransientError(detail)
        return detail  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(3)
                if self._proc.is_alive():
                    self._proc.kill()
                    self._proc.join(3)
            self._proc = None


class SegmentStage(StageBase):
    name = "segment"
    priority = 3  # local work, served first where it would compete

    def __init__(self, ctx: StageContext, cfg: SegmentConfig, builder: str = "") -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.spec = ModelSpec.from_config(cfg, builder)
        self.model = ModelProcess(self.spec)
        self.finder = PngTreeDiscovery(
            ctx,
            inputs=ctx.layout.stage_input(self.name),
            outputs=ctx.layout.stage_output(self.name),
            output_of=segment_output,
            outputs_are_dirs=True,
        )
        self._broken: str | None = None
        self._checkpoint_sha: str | None = None

    def unavailable(self) -> str | None:
        if self._broken:
            return self._broken
        if self.spec.builder:  # a test model: only the checkpoint's existence matters
            if not Path(self.spec.checkpoint).exists():
                return f"segment checkpoint {self.spec.checkpoint} not found"
            return None
        return checkpoint_problem(self.cfg.checkpoint, self.cfg.model_type)

    def close(self) -> None:
        self.model.close()

    def discover(self) -> Discovery:
        return self.finder.discover()

    def _checkpoint_sha256(self) -> str:
        """Hashed once per checkpoint file (size and mtime), cached under .emif/."""
        path = Path(self.spec.checkpoint)
        st = path.stat()
        key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
        cache = self.ctx.layout.checksums
        known: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError):
            known = json.loads(cache.read_bytes())
        if key not in known:
            known[key] = sha256_file(path)
            atomic_write_json(cache, known)
        return known[key]

    def run(self, item: Item, work: Work) -> StageResult:
        assert item.source is not None
        source = read_source_png(item.source, self.name)
        if self._checkpoint_sha is None:
            self._checkpoint_sha = self._checkpoint_sha256()
        started = utc_stamp()
        output = item.outputs[0]
        with building_dir(output) as tmp:
            try:
                result = self.model.run(item.source, tmp, work.check, self.cfg.recycle_after)
            except StageUnavailable as exc:
                self._broken = str(exc)
                raise
            manifest = {
                "source": str(item.source.relative_to(self.ctx.layout.root)),
                "source_sha256": sha256(source),
                "model_type": self.spec.model_type,
                "checkpoint": self.spec.checkpoint,
                "checkpoint_sha256": self._checkpoint_sha,
                "cutout": self.spec.cutout,
                "padding": self.spec.padding,
                "min_area_fraction": self.spec.min_area_fraction,
                "host": self.ctx.host,
                "started_at": started,
                "finished_at": utc_stamp(),
                "seconds": result["model_seconds"],
                **result,
            }
            atomic_write_json(tmp / "manifest.json", manifest)
            work.check()
            work.commit(lambda: publish_dir(tmp, output), output=str(output))
        return StageResult(
            output=str(output.relative_to(self.ctx.layout.root)),
            details={"segments": len(result["segments"]), "device": result["device"]},
        )
