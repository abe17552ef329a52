"""The shared-folder guarantees with real processes: races, SIGKILL at any moment, SIGTERM,
leases (docs/protocol.md#guarantees)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from emif_daemon.share.atomic import parse_temp_name
from emif_daemon.share.claims import read_claim
from tests.helpers import fast_sections, log_lines, spawn, toy_cmd, wait_for, write_config
from tests.tiny_daemon import expected_output


def make_inbox(root: Path, n: int) -> None:
    (root / "inbox").mkdir(exist_ok=True)
    for i in range(n):
        (root / "inbox" / f"{i:03}.txt").write_text("x")


def config(root: Path, host: str, attempts: int = 3, **coordination: float) -> Path:
    sections = fast_sections(
        root, coordination={"host_id": host, **coordination}, server={"max_attempts": attempts}
    )
    return write_config(root.parent / f"{host}.toml", sections)


def assert_all_done_once(root: Path, n: int) -> None:
    for i in range(n):
        out = root / "outbox" / f"{i:03}.out"
        assert out.read_bytes() == expected_output(f"{i:03}"), out
    leftovers = [p for p in root.rglob("*") if parse_temp_name(p.name)]
    assert leftovers == []


def runs(root: Path) -> Counter[str]:
    lines = (root / "runs.log").read_text().splitlines()
    return Counter(line.split()[0] for line in lines)


def test_two_processes_race_for_200_items(root: Path) -> None:
    procs = [spawn(toy_cmd(config(root, h), "--work-s", "0.01")) for h in ("a", "b")]
    try:
        # Both must be up before the work appears, so that they really compete for it.
        wait_for(
            lambda: (
                {e["host"] for e in log_lines(root) if e["event"] == "daemon_started"} == {"a", "b"}
            ),
            timeout=60,
        )
        make_inbox(root, 200)
        wait_for(lambda: len(list((root / "outbox").glob("*.out"))) == 200, timeout=120)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(15) == 0
    assert_all_done_once(root, 200)
    assert set(runs(root).values()) == {1}, "an item was worked on twice"
    hosts = Counter(line.split()[1] for line in (root / "runs.log").read_text().splitlines())
    assert hosts["a"] > 0
    assert hosts["b"] > 0


def test_sigkill_at_random_points_loses_nothing(root: Path) -> None:
    n = 12
    make_inbox(root, n)
    cfg = config(root, "solo", attempts=100)  # these deaths are not the items' fault
    rng = random.Random(7)
    claims = root / ".emif" / "claims" / "toy"
    for _ in range(20):
        proc = spawn(toy_cmd(cfg, "--work-s", "0.3"))

        def working(pid: int = proc.pid) -> bool:
            for path in claims.glob("*.claim"):
                content = read_claim(path)
                if content and content["pid"] == pid and content["state"] == "working":
                    return True
            return False

        # Wait until it is inside an item, then kill it at a random moment of that item.
        wait_for(working, timeout=30)
        time.sleep(rng.uniform(0.0, 0.35))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for out in (root / "outbox").glob("*.out") if (root / "outbox").exists() else []:
            assert out.read_bytes() == expected_output(out.stem), (
                "a partial file under a final name"
            )
    final = spawn(toy_cmd(cfg, "--once", "--work-s", "0.01"))
    assert final.wait(120) == 0
    assert_all_done_once(root, n)
    removed = [e for e in log_lines(root) if e["event"] == "orphan_removed"]
    assert removed, "the killed writers' temp files were not cleaned"


def test_three_hosts_share_work_and_survivors_finish_a_killed_hosts_items(root: Path) -> None:
    n = 30
    make_inbox(root, n)
    cfgs = {h: config(root, h, lease_s=1.5, heartbeat_s=0.2) for h in ("a", "b", "c")}
    procs = {h: spawn(toy_cmd(c, "--work-s", "0.2")) for h, c in cfgs.items()}
    claims = root / ".emif" / "claims" / "toy"

    def a_is_working() -> bool:
        for path in claims.glob("*.claim"):
            content = read_claim(path)
            if content and content["host"] == "a" and content["state"] == "working":
                return True
        return False

    wait_for(a_is_working, timeout=30)
    procs["a"].send_signal(signal.SIGKILL)
    procs["a"].wait(10)
    try:
        wait_for(lambda: len(list((root / "outbox").glob("*.out"))) == n, timeout=60)
    finally:
        for h in ("b", "c"):
            procs[h].send_signal(signal.SIGTERM)
        for h in ("b", "c"):
            assert procs[h].wait(15) == 0
    assert_all_done_once(root, n)
    by_host = Counter(line.split()[1] for line in (root / "runs.log").read_text().splitlines())
    assert by_host["b"] > 0
    assert by_host["c"] > 0
    broken = [e for e in log_lines(root) if e["event"] == "claim_broken"]
    assert broken
    assert {e["owner_host"] for e in broken} == {"a"}
    assert {e["host"] for e in broken} <= {"b", "c"}


def test_sigterm_mid_item_exits_fast_releases_and_another_host_takes_it(root: Path) -> None:
    make_inbox(root, 1)
    slow = spawn(toy_cmd(config(root, "slow", lease_s=600), "--work-s", "60"))
    claim = root / ".emif" / "claims" / "toy" / "000.claim"
    wait_for(claim.exists, timeout=30)
    started = time.monotonic()
    slow.send_signal(signal.SIGTERM)
    assert slow.wait(10) == 0
    assert time.monotonic() - started < 10
    assert not claim.exists(), "the claim was not released"
    events = [e["event"] for e in log_lines(root) if e["host"] == "slow"]
    assert "daemon_stopping" in events
    assert "claim_released" in events
    # Lease is 600 s: the other host can only be this quick because the claim was released.
    fast = subprocess.run(
        toy_cmd(config(root, "fast", lease_s=600), "--once", "--work-s", "0"),
        cwd=Path(__file__).resolve().parent.parent,
        timeout=60,
        check=False,
        capture_output=True,
    )
    assert fast.returncode == 0
    assert_all_done_once(root, 1)
    done = read_claim(claim)
    assert done is not None
    assert done["host"] == "fast"
    assert done["state"] == "done"


def test_every_log_line_is_json_with_the_spec_fields(root: Path) -> None:
    make_inbox(root, 3)
    proc = spawn(toy_cmd(config(root, "h"), "--once", "--work-s", "0"))
    assert proc.wait(60) == 0
    raw = (root / "logs" / "h.jsonl").read_text(encoding="utf-8").splitlines()
    assert raw
    for line in raw:
        event = json.loads(line)
        assert {"timestamp", "level", "event", "host"} <= set(event)
        assert event["timestamp"].endswith("Z")
        assert event["event"].replace("_", "").isalnum()
        assert event["event"] == event["event"].lower()
        if event["event"] in ("item_claimed", "item_done"):
            assert event["stage"] == "toy"
            assert event["item"]
    started = [json.loads(line) for line in raw if '"daemon_started"' in line]
    assert started[0]["stages"] == ["toy"]
    assert started[0]["root"] == str(root)
    assert "version" in started[0]
    assert os.path.exists(root / "metrics" / "h" / "toy.csv")
