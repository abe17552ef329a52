"""Nothing lost under hostile conditions: paused owners, full disks, clashing host ids.

Real processes where the condition needs one (docs/protocol.md#guarantees).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from emif_daemon.errors import TransientError
from emif_daemon.servers.sdapi import TXT2IMG, Server, ServerInfo
from emif_daemon.share.layout import Layout
from emif_daemon.share.root_marker import init_root
from tests.helpers import (
    fast_sections,
    log_lines,
    spawn,
    toy_cmd,
    wait_for,
    write_config,
)
from tests.tiny_daemon import expected_output


def config(root: Path, host: str, **coordination: float) -> Path:
    sections = fast_sections(root, coordination={"host_id": host, **coordination})
    return write_config(root.parent / f"{host}.toml", sections)


def runs(root: Path) -> Counter[str]:
    text = (root / "runs.log").read_text() if (root / "runs.log").exists() else ""
    return Counter(line.split()[1] for line in text.splitlines())


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


def foreign_report(root: Path, host: str) -> None:
    """What a live daemon of another machine under the same host id leaves on the share."""
    path = root / ".emif" / "hosts" / f"{host}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"host": host, "machine": "0123456789ab", "pid": 4242, "stopped": False}
    path.write_text(json.dumps(doc))


def test_a_host_id_used_by_a_live_daemon_of_another_machine_is_refused_at_start(
    root: Path,
) -> None:
    foreign_report(root, "twin")
    proc = spawn(toy_cmd(config(root, "twin"), "--once"))
    assert proc.wait(60) == 2
    clashes = [e for e in log_lines(root) if e["event"] == "host_id_clash"]
    assert len(clashes) == 1
    assert "machine tag 0123456789ab" in clashes[0]["reason"]
    assert "give each Mac its own host_id" in clashes[0]["reason"]
    assert not (root / "runs.log").exists()


def test_a_daemon_that_finds_its_host_id_taken_mid_run_stops_with_a_clear_error(
    root: Path,
) -> None:
    (root / "inbox").mkdir()
    proc = spawn(toy_cmd(config(root, "twin", heartbeat_s=0.1)))
    try:
        wait_for((root / ".emif" / "hosts" / "twin.json").exists, 30)
        foreign_report(root, "twin")
        assert proc.wait(30) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    events = [e["event"] for e in log_lines(root)]
    assert events.count("host_id_clash") == 1
    assert "daemon_stopping" in events
    # The other machine's report is left as it was.
    assert json.loads((root / ".emif/hosts/twin.json").read_text())["machine"] == "0123456789ab"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a share that fills up. Needs root (CI runs as root)."""
    mount = tmp_path / "share"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_share_that_fills_up_loses_nothing_and_every_item_is_made_once_space_returns(
    small_disk: Path,
) -> None:
    root = small_disk / "root"
    init_root(Layout(root), "test")
    (root / "inbox").mkdir(parents=True)
    names = [f"{i:02}" for i in range(6)]
    for name in names:
        (root / "inbox" / f"{name}.txt").write_text(name)
    sections = fast_sections(root, coordination={"host_id": "full"})
    sections["logging"] = {"file": "full.jsonl"}  # beside the config, off the full share
    cfg = write_config(small_disk.parent / "full.toml", sections)
    filler = small_disk / "filler"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):  # fill every byte
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    proc = spawn(toy_cmd(cfg, "--work-s", "0.05"))
    log = small_disk.parent / "full.jsonl"
    try:
        wait_for(lambda: log.exists() and "share_full" in log.read_text(), 30)
        time.sleep(1.0)  # ten more rounds against the full share: nothing to poll for
        claims = root / ".emif" / "claims" / "toy"
        assert [p for p in claims.glob("*.claim") if p.stat().st_size == 0] == []
        filler.unlink()
        wait_for(lambda: all((root / "outbox" / f"{n}.out").exists() for n in names), 60)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    for name in names:
        assert (root / "outbox" / f"{name}.out").read_bytes() == expected_output(name)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e for e in events if e["event"] == "item_failed"] == []
    assert sum(1 for e in events if e["event"] == "share_full") <= 3  # said, not flooded
    done = list((root / ".emif" / "claims" / "toy").glob("*.claim"))
    assert sorted(c.stem for c in done) == names
    assert all(json.loads(c.read_text())["state"] == "done" for c in done)
    assert not [p for p in root.rglob("*") if p.name.endswith(".emiftmp")]


def test_a_server_that_trickles_its_answer_is_cut_off_at_the_read_timeout() -> None:
    """Headers at once, then a byte a second: without a whole-answer deadline the worker
    and its claim would be held for hours."""

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    done = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n"
            )
            while not done.wait(0.2):
                try:
                    conn.sendall(b" ")
                except OSError:
                    return

    thread = threading.Thread(target=trickle)
    thread.start()
    server = Server(
        f"http://127.0.0.1:{listener.getsockname()[1]}", connect_timeout=1, read_timeout=1.5
    )
    server.info = ServerInfo("drawthings", "m")
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match=r"did not arrive whole within 1\.5 s"):
            server.post(TXT2IMG, {"prompt": "p"}, priority=1, expect=1)
    finally:
        done.set()
        thread.join(5)
        listener.close()
    assert time.monotonic() - started < 5
