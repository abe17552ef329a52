"""The root folder: where everything lives, which names are inputs, input → output paths.

Every path under the root comes from `Layout`; which folder feeds and receives each stage
is written once, in `STAGE_FOLDERS` (docs/protocol.md#the-root).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emif_daemon.share.names import name_problem, safe_name

__all__ = [
    "STAGES",
    "STAGE_FOLDERS",
    "Layout",
    "is_ignored",
    "is_input_png",
    "name_problem",
    "safe_name",
    "segment_output",
    "upscale_output",
]

STAGES = ("generate", "upscale", "segment")
# stage → (the Layout folder it reads, the Layout folder it writes)
STAGE_FOLDERS: dict[str, tuple[str, str]] = {
    "generate": ("queue", "generations"),
    "upscale": ("generations", "upscaled"),
    "segment": ("upscaled", "segments"),
}
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~")
UPSCALED_SUFFIX = "_upscaled_1"


@dataclass(frozen=True)
class Layout:
    """Paths under one root; every host that mounts the share sees the same ones."""

    root: Path

    @property
    def queue(self) -> Path:
        return self.root / "queue"

    @property
    def accepted(self) -> Path:
        return self.queue / "accepted"

    @property
    def done(self) -> Path:
        return self.queue / "done"

    @property
    def rejected(self) -> Path:
        return self.queue / "rejected"

    @property
    def cancelled(self) -> Path:
        return self.queue / "cancelled"

    @property
    def generations(self) -> Path:
        return self.root / "GENERATIONS"

    @property
    def upscaled(self) -> Path:
        return self.root / "UPSCALED_IMAGES"

    @property
    def segments(self) -> Path:
        return self.root / "SEGMENTS"

    @property
    def state(self) -> Path:
        return self.root / ".emif"

    @property
    def claims(self) -> Path:
        return self.state / "claims"

    @property
    def marker(self) -> Path:
        """Written once by `emif init`: this folder is the shared root (rootmark.py)."""
        return self.state / "root.json"

    @property
    def broken(self) -> Path:
        """Stale claims, renamed here when broken; each one counts as an attempt."""
        return self.state / "broken"

    @property
    def hosts(self) -> Path:
        """One report per daemon, written by it, read by `emif status`."""
        return self.state / "hosts"

    def host_report(self, host: str) -> Path:
        return self.hosts / f"{host}.json"

    @property
    def checksums(self) -> Path:
        """Cached sha256 of large local files (the segment checkpoint)."""
        return self.state / "checksums.json"

    @property
    def failed(self) -> Path:
        return self.state / "failed"

    @property
    def jobs(self) -> Path:
        return self.state / "jobs"

    @property
    def indices(self) -> Path:
        """Image indices reserved by exclusive creates (intake/allocation.py)."""
        return self.state / "indices"

    @property
    def fixes(self) -> Path:
        """Fixes of batches under way, each with the corrected file (intake/batches.py)."""
        return self.state / "fixes"

    @property
    def control(self) -> Path:
        return self.state / "control"

    @property
    def clock(self) -> Path:
        return self.state / "clock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def gallery(self) -> Path:
        """The static gallery (`emif gallery`): pages, thumbnails, their cache state."""
        return self.root / "gallery"

    def ensure(self) -> None:
        """Create every folder (idempotent, safe while other hosts do the same)."""
        for path in (
            self.accepted,
            self.done,
            self.rejected,
            self.cancelled,
            self.generations,
            self.upscaled,
            self.segments,
            self.jobs,
            self.control,
            self.clock,
            self.logs,
            self.metrics,
            self.hosts,
        ):
            path.mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            (self.claims / stage).mkdir(parents=True, exist_ok=True)
            (self.failed / stage).mkdir(parents=True, exist_ok=True)

    def may_hold_temp_files(self, folder: Path) -> bool:
        """Whether the orphan sweep must look inside `folder`: not in claims, logs or
        metrics (never written through temp names), and in SEGMENTS/ no deeper than the
        nation/category folders (a folder of cut-outs is built aside and renamed whole)."""
        if folder in (self.claims, self.broken, self.logs, self.metrics):
            return False
        try:
            rel = folder.relative_to(self.segments)
        except ValueError:
            return True
        return len(rel.parts) < 3

    def stage_input(self, stage: str) -> Path:
        """The folder whose new files are `stage`'s work (its file events wake the stage)."""
        return Path(getattr(self, STAGE_FOLDERS[stage][0]))

    def stage_output(self, stage: str) -> Path:
        """The folder `stage` publishes into (where its temp files can be)."""
        return Path(getattr(self, STAGE_FOLDERS[stage][1]))


def is_ignored(name: str) -> bool:
    """Names that are never inputs: hidden, temporary, half-downloaded.

    (docs/protocol.md#the-root)
    """
    return name.startswith(".") or name.endswith(TEMP_SUFFIXES)


def is_input_png(name: str) -> bool:
    return not is_ignored(name) and name.lower().endswith(".png")


def upscale_output(rel: str) -> str:
    """GENERATIONS/<dirs>/<stem>.png → UPSCALED_IMAGES/<dirs>/<stem>_upscaled_1.png.

    Plain string work on relative POSIX paths: it runs for every image on each scan.
    """
    return f"{rel.rpartition('.')[0]}{UPSCALED_SUFFIX}.png"


def segment_output(rel: str) -> str:
    """UPSCALED_IMAGES/<dirs>/<stem>.png → SEGMENTS/<dirs>/<stem>/ (a folder)."""
    return rel.rpartition(".")[0]
