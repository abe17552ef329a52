"""What the image stages share: sidecars, publishing, settled discovery of PNG trees."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emif_daemon.engine.stage import Discovery, Item, StageContext
from emif_daemon.errors import NotARegularFile, PermanentItemError
from emif_daemon.logs import get_logger
from emif_daemon.png import png_problem
from emif_daemon.share.atomic import (
    fsync_dir,
    publish_new,
    read_regular,
    rename_noreplace,
    write_temp,
)
from emif_daemon.share.layout import is_input_png
from emif_daemon.share.watch import TreeScanner


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


MAX_SOURCE_BYTES = 512 * 2**20  # a 2048² PNG is ~10 MB; anything near this is not an image


def read_source_png(path: Path, stage: str) -> bytes:
    """An input image's bytes, or a PermanentItemError saying what to do about it.

    Special files (a FIFO named *.png would block the read for ever), unreadable files and
    oversized ones fail the item at once: no retry can fix them.
    """
    try:
        data = read_regular(path, MAX_SOURCE_BYTES)
    except FileNotFoundError as exc:
        raise PermanentItemError(f"source {path} disappeared") from exc
    except (NotARegularFile, PermissionError) as exc:
        raise PermanentItemError(
            f"source {path} cannot be read ({exc.strerror}); replace it with a PNG, "
            f"then run `emif retry --stage {stage}`"
        ) from exc
    problem = png_problem(data)
    if problem:
        raise PermanentItemError(
            f"source {path} is not a usable PNG ({problem}); "
            f"replace it, then run `emif retry --stage {stage}`"
        )
    return data


def without_images(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != "init_images"}


def publish_png(output: Path, data: bytes, sidecar: dict[str, Any]) -> None:
    """The PNG under its final name (the commit point), then its sidecar; neither ever
    replaces an image: FileExistsError if the image is there already.

    The sidecar is written and synced under its temp name before the image appears, and
    renamed into place right after: a host killed in between leaves a whole sidecar under
    its temp name, which the orphan sweep puts in place (files.finish_sidecar). Image first,
    so a host that lost its claim while paused fails before anything of it shows
    (docs/protocol.md#commit). A sidecar found in place without its image can only be left
    over from an attempt that never published: it is replaced, and said so.
    """
    doc = {**sidecar, "output_sha256": sha256(data)}
    path = output.with_suffix(".json")
    body = (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    tmp = write_temp(path, body)
    try:
        publish_new(output, data)
        try:
            rename_noreplace(tmp, path)
        except FileExistsError:
            get_logger().warning("stale_sidecar_replaced", path=str(path))
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _unreadable(folder: Path, exc: OSError) -> None:
    """A folder the scan had to skip: said once, until it can be read again."""
    get_logger().error(
        "folder_unreadable",
        path=str(folder),
        error=exc.strerror or str(exc),
        hint="its images wait until the folder can be read (check its permissions)",
    )


class PngTreeDiscovery:
    """Inputs = settled PNGs under one tree whose output is not in another tree yet."""

    def __init__(
        self,
        ctx: StageContext,
        *,
        inputs: Path,
        outputs: Path,
        output_of: Callable[[str], str],
        outputs_are_dirs: bool = False,
    ) -> None:
        self.ctx = ctx
        self.inputs_top = inputs
        self.outputs_top = outputs
        self.output_of = output_of
        self.in_scan = TreeScanner(
            inputs, want=is_input_png, on_unreadable=_unreadable, relist_s=ctx.relist_s
        )
        self.out_scan = TreeScanner(
            outputs,
            want=(lambda _n: False) if outputs_are_dirs else is_input_png,
            report_dirs=outputs_are_dirs,
            relist_s=ctx.relist_s,
        )
        self._last: tuple[int, int] = (-1, -1)
        self._wanted: dict[str, str] = {}
        self._expected: set[str] = set()
        self._todo: list[str] = []
        self._lock = threading.Lock()

    def _pending(self) -> list[str]:
        """Inputs whose output is missing; recomputed only when a folder changed, so a
        rescan of 100 000 finished images costs a stat per folder and nothing more."""
        rels = self.in_scan.scan()
        if self.in_scan.version != self._last[0]:
            self._wanted = {rel: self.output_of(rel) for rel in rels}
            self._expected = set(self._wanted.values())
        expected = self._expected
        done = self.out_scan.scan(descend=lambda rel: rel not in expected)
        versions = (self.in_scan.version, self.out_scan.version)
        if versions != self._last:
            self._last = versions
            self._todo = sorted(rel for rel, out in self._wanted.items() if out not in done)
        return self._todo

    def discover(self) -> Discovery:
        with self._lock:  # a stage's workers share this discovery
            todo = self._pending()
        found = Discovery()
        if not todo:
            return found
        now = self.ctx.clock.now()
        items: list[Item] = []
        for rel in todo:
            source = self.inputs_top / self.in_scan.actual(rel)  # as spelled on disk
            if not self.ctx.settler.ready(source, now):
                found.waiting += 1
                continue
            output = self.outputs_top / self._wanted[rel]
            items.append(Item(key=rel, outputs=(output,), source=source))
        found.items = items
        keep = (str(self.inputs_top / self.in_scan.actual(rel)) for rel in todo)
        self.ctx.settler.forget(self.inputs_top, keep)
        return found
