"""Progress that tells the truth: an ETA from the last images' pace, only while a daemon
runs; who runs, what is off and why, what failed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from emif_daemon.intake.inbox import Inbox
from emif_daemon.intake.planning import Expansion
from emif_daemon.observe.metrics import COLUMNS
from emif_daemon.observe.status import collect
from emif_daemon.observe.status_text import render_table
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.failure_records import FailureLog, FailureRecord
from emif_daemon.share.layout import Layout


def accepted_batch(root: Path, count: int) -> None:
    doc = {"jobs": [{"nation": "Peru", "category": "family", "prompt": "p", "count": count}]}
    (root / "queue" / "b.json").write_text(json.dumps(doc))
    Inbox(Layout(root), Expansion("{prompt}", "", {}), lambda _e, _d: None).take(
        root / "queue" / "b.json"
    )


def made(root: Path, n: int, every_s: float, now: float) -> None:
    """`n` images made, one every `every_s` seconds, the last one now; with metrics rows."""
    folder = root / "GENERATIONS" / "Peru" / "family"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [",".join(COLUMNS)]
    for i in range(1, n + 1):
        (folder / f"Peru_family_{i}_1.png").write_bytes(b"png")
        at = utc_stamp(now - (n - i) * every_s)
        rows.append(f"{at},Peru/family/Peru_family_{i},{every_s},{every_s},1,40,1000,done")
    metrics = root / "metrics" / "mac-a" / "generate.csv"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text("\n".join(rows) + "\n")


def host(root: Path, *, stopped: bool) -> None:
    report = {
        "host": "mac-a",
        "stopped": stopped,
        "updated": "2026-11-26T10:00:00Z",
        "servers": {"http://127.0.0.1:7860": {"reachable": True}},
    }
    (root / ".emif" / "hosts" / "mac-a.json").write_text(json.dumps(report))


def test_after_10_images_at_2_s_each_the_eta_is_within_a_quarter_of_the_truth(root: Path) -> None:
    now = time.time()
    accepted_batch(root, 24)
    made(root, 10, 2.0, now)
    host(root, stopped=False)
    status = collect(Layout(root), server_now=time.time(), lease_s=120)
    truth = 14 * 2.0
    gen = status["stages"]["generate"]
    assert abs(gen["eta_s"] - truth) <= 0.25 * truth, gen
    [batch] = status["batches"]
    assert (batch["done"], batch["pending"]) == (10, 14)
    assert abs(batch["eta_s"] - truth) <= 0.25 * truth
    text = render_table(status)
    assert "host mac-a: running; http://127.0.0.1:7860 reachable" in text


def test_no_eta_when_no_daemon_runs_and_the_reason_is_said(root: Path) -> None:
    now = time.time()
    accepted_batch(root, 24)
    made(root, 10, 2.0, now)
    host(root, stopped=True)
    status = collect(
        Layout(root),
        server_now=time.time(),
        lease_s=120,
        disabled={"segment": "segment.enabled = false in c.toml"},
    )
    assert status["running"] is False
    assert status["stages"]["generate"]["eta_s"] is None
    text = render_table(status)
    assert "no daemon is running: nothing will be made (no ETA)" in text
    assert "segment    off: segment.enabled = false in c.toml" in text
    assert "host mac-a: stopped (last seen 2026-11-26T10:00:00Z)" in text


def test_failures_are_shown_with_their_reasons(root: Path) -> None:
    FailureLog(Layout(root).failed, "upscale").record(
        FailureRecord.now("upscale", "Peru/family/x.png", "HTTP 422: bad key", 1, "mac-a", None)
    )
    status = collect(Layout(root), server_now=time.time(), lease_s=120)
    assert [f["reason"] for f in status["failures"]] == ["HTTP 422: bad key"]
    assert "upscale Peru/family/x.png: HTTP 422: bad key" in render_table(status)
