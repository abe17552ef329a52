"""Nothing lost under hostile conditions: paused owners, full disks, clashing host ids.

Real processes where the condition needs one (docs/protocol.md#guarantees).
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import (
    fast_sections,
    log_lines,
    spawn,
    toy_cmd,
    wait_for,
    write_config,
)
from tests.toy_daemon import expected_output


def config(root: Path, host: str, **coordination: float) -> Path:
    sections = fast_sections(root, coordination={"host_id": host, **coordination})
    return write_config(root.parent / f"{host}.toml", sections)


def runs(root: Path) -> Counter[str]:
    text = (root / "runs.log").read_text() if (root / "runs.log").exists() else ""
    return Counter(line.split()[1] for line in text.splitlines())


@pytest.mark.slow
def test_an_owner_paused_inside_its_commit_never_replaces_the_new_owners_work(
    root: Path,
) -> None:
    """Host a stops (a Mac asleep) after its ownership check, before its renames, for
    longer than the lease; host b breaks the claim and commits. When a wakes, nothing of
    a's replaces b's output or sidecar, and a never says item_done."""
    (root / "inbox").mkdir()
    (root / "inbox" / "x.txt").write_text("x")
    a = spawn(toy_cmd(config(root, "a", lease_s=2, heartbeat_s=0.2), "--pause-in-commit", "1.5"))
    try:
        marker = wait_for(lambda: next(root.glob("publishing-*"), None), timeout=30)
        a.send_signal(signal.SIGSTOP)
        assert marker.name == f"publishing-{a.pid}"
        b = spawn(toy_cmd(config(root, "b", lease_s=2, heartbeat_s=0.2), "--once"))
        assert b.wait(60) == 0
        sidecar = json.loads((root / "outbox" / "x.json").read_text())
        assert sidecar["host"] == "b"
        a.send_signal(signal.SIGCONT)
        # a wakes inside its pause, tries its renames, loses, and removes its temp file.
        wait_for(lambda: not [p for p in (root / "outbox").iterdir() if p.name[0] == "."], 20)
    finally:
        a.send_signal(signal.SIGCONT)
        a.terminate()
        assert a.wait(30) == 0
    output = (root / "outbox" / "x.out").read_bytes()
    assert output == expected_output("x")
    sidecar = json.loads((root / "outbox" / "x.json").read_text())
    assert sidecar["host"] == "b"
    assert sidecar["output_sha256"] == hashlib.sha256(output).hexdigest()
    events = log_lines(root)
    assert [e["host"] for e in events if e["event"] == "item_done"] == ["b"]
    assert runs(root) == {"a": 1, "b": 1}
    assert not [p for p in (root / "outbox").iterdir() if p.name.startswith(".")]
