"""A real daemon run, made once per test session and shared by the gallery and export tests:
2 nations × 2 categories × 3 images through generate, upscale and segment (the tiny
random-weights SAM), then a second prompts file whose one item fails on the server (HTTP 500,
with one attempt allowed), so the data set also holds a failure."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emif_daemon.share.failure_records import FailureLog, FailureRecord
from emif_daemon.share.layout import Layout
from emif_daemon.share.root_marker import init_root
from tests.helpers import fast_sections, serving, spawn, tiny_cmd, wait_for, write_config
from tests.tiny_sam import save_checkpoint

NATIONS = ("Italy", "Japan")
CATEGORIES = ("family", "working")
COUNT = 3
FAILED_ITEM = "Italy/family/Italy_family_4"
EXTRA = (
    "[generate.payload]\nwidth = 128\nheight = 128\nsteps = 4\nloras = []\ncontrols = []\n"
    "[upscale]\nexpect_size = [256, 256]\n"
    '[[upscale.passes]]\nupscaler = "4x_ultrasharp_f16.ckpt"\nupscaler_scale = 2\n'
    "strength = 0.0\n"
)


@dataclass(frozen=True)
class RealRun:
    root: Path
    config: Path

    def sidecars(self) -> dict[str, dict[str, Any]]:
        """Every generation's sidecar, by image path relative to GENERATIONS/."""
        top = self.root / "GENERATIONS"
        return {
            p.with_suffix(".png").relative_to(top).as_posix(): json.loads(p.read_text())
            for p in sorted(top.rglob("*.json"))
        }

    def failure(self) -> FailureRecord:
        """The failure record of the item the server failed."""
        record = FailureLog(self.root / ".emif" / "failed", "generate").read(FAILED_ITEM)
        assert record is not None
        return record


def _daemon_until(config: Path, log: Path, done: Callable[[], object]) -> None:
    """The daemon (tiny SAM in its segment stage) until `done()`, then a stop, as a user's."""
    proc = spawn(tiny_cmd(config), stderr_to=log)
    try:
        wait_for(done, timeout=600)
        assert proc.poll() is None, f"the daemon exited on its own; see {log}"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, f"see {log}"


def real_run(base: Path) -> RealRun:
    """The run under `base` (the session's basetemp): made by the first caller, then reused."""
    folder = base / "real-run"
    ready = folder / "ready"
    run = RealRun(folder / "root", folder / "emif.toml")
    if ready.exists():
        return run
    folder.mkdir(parents=True, exist_ok=True)
    init_root(Layout(run.root), "test")
    checkpoint = folder / "tiny_sam.pth"
    save_checkpoint(str(checkpoint))
    with serving() as sdapi:
        sections = fast_sections(
            run.root,
            server={"url": sdapi.url, "max_attempts": 1},
            segment={
                "enabled": True,
                "checkpoint": str(checkpoint),
                "device": "cpu",
                "points_per_side": 4,
                "pred_iou_thresh": 0.0,
                "stability_score_thresh": 0.0,
            },
            gallery={"enabled": False},  # `emif gallery` builds it, under test
        )
        write_config(run.config, sections, EXTRA)
        queue = run.root / "queue"
        queue.mkdir(exist_ok=True)
        jobs = [
            {"nation": n, "category": c, "prompt": f"people of {n}, {c} life", "count": COUNT}
            for n in NATIONS
            for c in CATEGORIES
        ]
        (queue / "nations.json").write_text(json.dumps({"jobs": jobs}))
        log = folder / "daemon.stderr"
        manifests = run.root / "SEGMENTS"
        _daemon_until(run.config, log, lambda: len(list(manifests.rglob("manifest.json"))) == 12)
        sdapi.state.fault("500")
        one_more = {"nation": "Italy", "category": "family", "prompt": "one more", "start_index": 4}
        more = {"jobs": [one_more]}
        (queue / "more.json").write_text(json.dumps(more))
        failed = run.root / ".emif" / "failed" / "generate" / f"{FAILED_ITEM}.json"
        _daemon_until(run.config, log, failed.exists)
    ready.write_text("ok")
    return run
