"""A kill at any step of a multi-step intake command leaves the old state or the new one, and
the next command completes it (docs/protocol.md#prompts-files, #fixing-a-batch).

Each test counts the steps on the root (renames, unlinks, fsyncs, exclusive creates) of a
real process, then, for every step N, runs that process again on a fresh copy of the root
and SIGKILLs it just before step N (tests/crash_at.py), then runs the next command and checks
that nothing was lost.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from emif_daemon.share.layout import Layout
from emif_daemon.share.root_marker import init_root
from tests import sdapi_server
from tests.helpers import REPO, log_lines, pipeline_config, pngs, run_emif

BATCH = {"jobs": [{"nation": "Norway", "category": "family", "prompt": "a family", "count": 2}]}


def crash_at(step: int, root: Path, module: str, *args: str) -> tuple[int, list[str]]:
    """Run `python -m module args` under tests/crash_at.py, killed before `step` (0: never);
    its exit code and the steps it began."""
    steps = root.parent / f"steps-{step}.txt"
    steps.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "tests.crash_at", str(step), str(root), str(steps), module]
    done = subprocess.run(
        [*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    begun = steps.read_text(encoding="utf-8").splitlines() if steps.exists() else []
    return done.returncode, begun


def fresh(base: Path, to: Path, url: str) -> tuple[Path, Path]:
    """A copy of the root under `base` at `to`, with its own config."""
    shutil.copytree(base / "root", to / "root", symlinks=True)
    return to / "root", pipeline_config(to / "root", url, upscale=False)


def left_over(root: Path) -> list[str]:
    """What a finished intake must not leave: moves in hand, files without a plan, journals."""
    layout = Layout(root)
    out = [p.name for p in layout.queue.rglob("*.moving")]
    out += [p.name for p in layout.accepted.iterdir()]
    out += [p.name for p in layout.fixes.glob("*")] if layout.fixes.exists() else []
    return out


def events(root: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in log_lines(root) if e.get("event") == name]


def planned_names(root: Path) -> list[str]:
    names = []
    for path in sorted((root / ".emif" / "jobs").glob("*.plan.json")):
        for job in json.loads(path.read_text())["jobs"]:
            names += [
                f"{job['nation']}/{job['category']}/{job['nation']}_{job['category']}_{i}_1.png"
                for i in range(job["first"], job["first"] + job["count"])
            ]
    return sorted(names)


@pytest.mark.timeout(1500)
def test_a_kill_at_every_step_of_intake_loses_nothing(
    tmp_path: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    base = tmp_path / "base"
    init_root(Layout(base / "root"), "test")
    (base / "root" / "queue" / "x.json").write_text(json.dumps(BATCH))
    root, cfg = fresh(base, tmp_path / "count", sdapi.url)
    code, steps = crash_at(0, root, "tests.intake_step", str(cfg))
    assert code == 0, steps
    assert len(steps) > 15, steps
    for n in range(1, len(steps) + 1):
        root, cfg = fresh(base, tmp_path / f"kill-{n}", sdapi.url)
        code, begun = crash_at(n, root, "tests.intake_step", str(cfg))
        assert code == -signal.SIGKILL, f"step {n} ({steps[n - 1]}) was not reached: {begun}"
        after = run_emif("run", "--once", "--no-progress", "--config", str(cfg), timeout=90)
        where = f"killed before step {steps[n - 1]}; then --once exited {after.returncode}"
        assert after.returncode == 0, f"{where}\n{after.stderr[-2000:]}"
        made = pngs(root / "GENERATIONS")
        assert len(made) == 2, f"{where}: made {made}"
        assert made == planned_names(root), f"{where}: made {made}"
        assert (root / "queue" / "done" / "x.json").exists(), where
        assert left_over(root) == [], where
        [done] = events(root, "batch_done")
        assert (done["items"], done["done"], done["failed"]) == (2, 2, 0), where


@pytest.mark.timeout(1500)
def test_a_kill_at_every_step_of_retry_file_loses_nothing(
    tmp_path: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    """A batch failed on a payload mistake; `emif retry --file` is killed at each step. The
    next command (the same `retry --file`, or a daemon's `--once` when the fix was written
    down) completes it: both images made, under their names, with the corrected payload."""
    base = tmp_path / "base"
    init_root(Layout(base / "root"), "test")
    wrong = {"defaults": {"seed": 5, "payload": {"no_such_key": 1}}, "jobs": BATCH["jobs"]}
    right = {"defaults": {"seed": 5, "payload": {"steps": 3}}, "jobs": BATCH["jobs"]}
    (base / "root" / "queue" / "b.json").write_text(json.dumps(wrong))
    cfg = pipeline_config(base / "root", sdapi.url, upscale=False)
    assert run_emif("run", "--once", "--no-progress", "--config", str(cfg)).returncode == 1
    assert len(events(base / "root", "item_failed")) == 2
    corrected = tmp_path / "b.json"
    corrected.write_text(json.dumps(right))
    args = ["retry", "--file", str(corrected)]
    root, cfg = fresh(base, tmp_path / "count", sdapi.url)
    code, steps = crash_at(0, root, "emif_daemon.cli", *args, "--config", str(cfg))
    assert code == 0, steps
    assert len(steps) > 10, steps
    for n in range(1, len(steps) + 1):
        root, cfg = fresh(base, tmp_path / f"kill-{n}", sdapi.url)
        code, _ = crash_at(n, root, "emif_daemon.cli", *args, "--config", str(cfg))
        assert code == -signal.SIGKILL, f"step {n} ({steps[n - 1]}) was not reached"
        where = f"killed before step {steps[n - 1]}"
        written = any(Layout(root).fixes.glob("*.json"))
        if not written or n % 2:  # the next command: the same retry (it finishes the fix)
            again = run_emif(*args, "--config", str(cfg))
            assert again.returncode == 0, f"{where}: {again.stdout}{again.stderr}"
        once = run_emif("run", "--once", "--no-progress", "--config", str(cfg), timeout=90)
        assert once.returncode == 0, f"{where}: --once exited {once.returncode}"
        assert pngs(root / "GENERATIONS") == [
            "Norway/family/Norway_family_1_1.png",
            "Norway/family/Norway_family_2_1.png",
        ], where
        sidecar = json.loads(
            (root / "GENERATIONS/Norway/family/Norway_family_1_1.json").read_text()
        )
        assert sidecar["payload"]["steps"] == 3, where
        done = root / "queue" / "done"
        assert json.loads((done / "b.json").read_text()) == right, where
        assert json.loads((done / "b.before-fix.json").read_text()) == wrong, where
        assert left_over(root) == [], where
        assert not list((root / ".emif" / "failed" / "generate").rglob("*.json")), where


@pytest.mark.timeout(1500)
def test_a_kill_at_every_step_of_a_fix_by_a_dropped_file_loses_nothing(
    tmp_path: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    """The corrected file dropped into queue/ under the batch's name; the intake round that
    takes it is killed at each step; the next `--once` finishes the fix and makes the
    images, and the corrected file is never taken for a new batch."""
    base = tmp_path / "base"
    init_root(Layout(base / "root"), "test")
    wrong = {"defaults": {"seed": 5, "payload": {"no_such_key": 1}}, "jobs": BATCH["jobs"]}
    right = {"defaults": {"seed": 5, "payload": {"steps": 3}}, "jobs": BATCH["jobs"]}
    (base / "root" / "queue" / "b.json").write_text(json.dumps(wrong))
    cfg = pipeline_config(base / "root", sdapi.url, upscale=False)
    assert run_emif("run", "--once", "--no-progress", "--config", str(cfg)).returncode == 1
    (base / "root" / "queue" / "b.json").write_text(json.dumps(right))
    root, cfg = fresh(base, tmp_path / "count", sdapi.url)
    code, steps = crash_at(0, root, "tests.intake_step", str(cfg))
    assert code == 0, steps
    assert len(steps) > 10, steps
    for n in range(1, len(steps) + 1):
        root, cfg = fresh(base, tmp_path / f"kill-{n}", sdapi.url)
        code, _ = crash_at(n, root, "tests.intake_step", str(cfg))
        assert code == -signal.SIGKILL, f"step {n} ({steps[n - 1]}) was not reached"
        where = f"killed before step {steps[n - 1]}"
        once = run_emif("run", "--once", "--no-progress", "--config", str(cfg), timeout=90)
        assert once.returncode == 0, f"{where}: --once exited {once.returncode}"
        assert pngs(root / "GENERATIONS") == [
            "Norway/family/Norway_family_1_1.png",
            "Norway/family/Norway_family_2_1.png",
        ], where
        done = root / "queue" / "done"
        assert json.loads((done / "b.json").read_text()) == right, where
        assert json.loads((done / "b.before-fix.json").read_text()) == wrong, where
        assert left_over(root) == [], where
        assert not (root / "queue" / "b.json").exists(), where
        assert not list((root / "queue" / "rejected").iterdir()), where
