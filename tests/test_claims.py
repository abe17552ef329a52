"""The claim protocol on a real folder: exclusive, heartbeat, commit, stale.

(docs/protocol.md#claims)
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from emif_daemon.share.claims import ClaimStore, read_claim
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.identity import HostIdentity


def store(root: Path, host: str = "a", lease_s: float = 30.0) -> ClaimStore:
    return ClaimStore(
        root / "claims",
        root / "broken",
        ServerClock(root / "clock", host),
        identity=HostIdentity.current(host),
        lease_s=lease_s,
    )


def make_stale(s: ClaimStore, item: str, *, host: str = "ghost", age: float = 3600) -> Path:
    """A working claim of a dead host, last heartbeat `age` seconds ago (file-server time)."""
    path = s.path("toy", item)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": 1, "token": "dead", "state": "working"}))
    old = path.stat().st_mtime - age
    os.utime(path, (old, old))
    return path


def test_claim_is_exclusive_and_done_claims_stay(root: Path) -> None:
    a, b = store(root, "a"), store(root, "b")
    claim = a.try_claim("toy", "x/1")
    assert claim is not None
    assert b.try_claim("toy", "x/1") is None
    assert a.commit(claim, lambda: None)
    content = read_claim(a.path("toy", "x/1"))
    assert content is not None
    assert content["state"] == "done"
    assert content["host"] == "a"
    # A done claim is never broken, however old.
    old = time.time() - 10_000
    os.utime(a.path("toy", "x/1"), (old, old))
    assert b.break_stale("toy", "x/1") is None
    assert b.try_claim("toy", "x/1") is None


def test_release_lets_another_host_claim_at_once(root: Path) -> None:
    a, b = store(root, "a"), store(root, "b")
    claim = a.try_claim("toy", "item")
    assert claim is not None
    a.release(claim)
    assert not a.path("toy", "item").exists()
    assert b.try_claim("toy", "item") is not None


def test_heartbeat_moves_mtime_and_detects_loss(root: Path) -> None:
    a = store(root, "a")
    claim = a.try_claim("toy", "item")
    assert claim is not None
    old = time.time() - 100
    os.utime(claim.path, (old, old))
    assert a.heartbeat(claim)
    assert claim.path.stat().st_mtime > old + 90
    claim.path.unlink()  # someone broke it
    assert not a.heartbeat(claim)
    assert claim.lost
    published = []
    assert not a.commit(claim, lambda: published.append(1))
    assert published == []  # a lost claim never publishes


def test_stale_claim_is_broken_by_exactly_one_of_several_breakers(root: Path) -> None:
    breakers = [store(root, f"h{i}", lease_s=5) for i in range(8)]
    for round_ in range(20):
        make_stale(breakers[0], f"item{round_}")
        barrier = threading.Barrier(len(breakers))
        results: list[object] = []

        def race(
            s: ClaimStore,
            item: str = f"item{round_}",
            barrier: threading.Barrier = barrier,
            results: list[object] = results,
        ) -> None:
            barrier.wait()
            results.append(s.break_stale("toy", item))

        threads = [threading.Thread(target=race, args=(s,)) for s in breakers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(r is not None for r in results) == 1
        assert breakers[0].broken_count("toy", f"item{round_}") == 1


def test_claim_of_a_live_owner_is_never_broken(root: Path) -> None:
    owner = store(root, "owner", lease_s=0.5)
    breaker = store(root, "breaker", lease_s=0.5)
    claim = owner.try_claim("toy", "item")
    assert claim is not None
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.05):
            owner.heartbeat(claim)

    t = threading.Thread(target=beat)
    t.start()
    try:
        deadline = time.monotonic() + 1.5  # three leases
        while time.monotonic() < deadline:
            assert breaker.break_stale("toy", "item") is None
            time.sleep(0.02)
    finally:
        stop.set()
        t.join()
    assert owner.owns(claim)


@pytest.mark.parametrize("skew", [3600.0, -3600.0])
def test_clock_skew_of_the_breaker_does_not_matter(
    root: Path, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """Ages are measured against the file server's clock, never the local one."""
    owner = store(root, "owner", lease_s=60)
    fresh = owner.try_claim("toy", "fresh")
    assert fresh is not None
    stale_path = make_stale(owner, "stale", age=120)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + skew)
    skewed = store(root, "skewed", lease_s=60)
    assert skewed.break_stale("toy", "fresh") is None
    assert skewed.break_stale("toy", "stale") is not None
    assert not stale_path.exists()


@pytest.mark.parametrize("content", [b"", b"{half a cla", b"[1, 2]"])
def test_an_unreadable_claim_is_left_alone_for_a_lease_then_broken(
    root: Path, content: bytes
) -> None:
    """Empty (the disk filled between create and write), cut short, or edited by hand: it
    may still be being written, so it is fresh for one lease; then it is broken, and the
    break counts as an attempt like any other."""
    s = store(root, "a", lease_s=30)
    path = s.path("toy", "item")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert s.break_stale("toy", "item") is None
    assert path.exists()
    old = time.time() - 31
    os.utime(path, (old, old))
    assert s.break_stale("toy", "item") == {}
    assert not path.exists()
    assert s.broken_count("toy", "item") == 1
    assert s.try_claim("toy", "item") is not None


def test_a_claim_whose_first_write_fails_is_removed(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: the create succeeds, the write does not. No empty claim may stay."""
    s = store(root)
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        s.try_claim("toy", "item")
    monkeypatch.setattr(os, "write", real_write)
    assert not s.path("toy", "item").exists()
    assert s.held() == []
    assert s.try_claim("toy", "item") is not None


def test_claim_of_a_dead_process_on_this_host_is_broken_without_waiting(root: Path) -> None:
    s = store(root, "a", lease_s=3600)
    path = s.path("toy", "item")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "a", "pid": 2**22 + 7, "token": "t", "state": "working"}))
    broken = s.break_stale("toy", "item")
    assert broken is not None
    assert broken["pid"] == 2**22 + 7


def test_a_heartbeat_after_commit_never_writes_to_a_reused_descriptor(root: Path) -> None:
    """The heartbeat thread works from a snapshot of held claims; a claim committed in the
    meantime has closed its fd, and the number goes to the next file opened."""
    s = store(root)
    claim = s.try_claim("toy", "item")
    assert claim is not None
    assert s.commit(claim, lambda: None)
    other = root / "other.png"
    fd = os.open(other, os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"image bytes")
        assert not s.heartbeat(claim)
        s.release(claim)
    finally:
        os.close(fd)
    assert other.read_bytes() == b"image bytes"
    content = read_claim(s.path("toy", "item"))
    assert content is not None
    assert content["state"] == "done"
