"""Exactly-once work on a shared folder (docs/protocol.md#claims).

A claim is a file the file server creates atomically with O_CREAT|O_EXCL; whoever fails to
create it does not touch the item. The owner keeps the claim open and rewrites it in place
as a heartbeat, so its mtime is stamped by the file server's clock. A done claim is
rewritten in place, never removed or replaced: a host with a stale directory listing still
fails to create it. Stale claims are broken by renaming them to a unique name in
``.emif/broken/`` — only one host's rename can succeed — and each broken claim counts as an
attempt of its item.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from emif_daemon.share.atomic import Broken, break_by_rename, durable_sync, make_dirs
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.held import CLAIM_BROKEN_MARK, held_name
from emif_daemon.share.identity import HostIdentity

CLAIM_SUFFIX = ".claim"


class ClaimState(StrEnum):
    WORKING = "working"
    DONE = "done"


@dataclass
class Claim:
    """A claim this process holds; `lock` serialises heartbeat, commit and release."""

    stage: str
    item: str
    path: Path
    token: str
    started: float
    lost: bool = False
    abandoned: bool = False
    closed: bool = False  # committed or released: nothing more is written to it
    published: bool = False  # its output went into place
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def read_claim(path: Path) -> dict[str, Any] | None:
    """The claim's content, or None if it is missing or cannot be parsed."""
    try:
        return parse_claim(path.read_bytes())
    except OSError:
        return None


def parse_claim(raw: bytes) -> dict[str, Any] | None:
    """A claim's (or lock's) JSON object, or None if it is not one (empty, cut short)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class ClaimStore:
    """Claims of one host on one root; thread-safe."""

    def __init__(
        self,
        claims_dir: Path,
        broken_dir: Path,
        clock: ServerClock,
        *,
        identity: HostIdentity,
        lease_s: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.claims_dir = claims_dir
        self.broken_dir = broken_dir
        self.clock = clock
        self.identity = identity
        self.lease_s = lease_s
        self.wall = wall  # only for the human-readable times in claims, never for decisions
        self._held: dict[Path, Claim] = {}
        self._mutex = threading.Lock()

    @property
    def host(self) -> str:
        return self.identity.host

    # -- paths -------------------------------------------------------------------------
    def path(self, stage: str, item: str) -> Path:
        return self.claims_dir / stage / (item + CLAIM_SUFFIX)

    def held(self) -> list[Claim]:
        with self._mutex:
            return list(self._held.values())

    # -- claim, heartbeat, commit, release ------------------------------------------------
    def _content(self, claim: Claim, state: ClaimState, **extra: Any) -> bytes:
        me = self.identity
        doc = {
            "host": me.host,
            "machine": me.machine,
            "pid": me.pid,
            "pid_start": me.pid_start,
            "token": claim.token,
            "stage": claim.stage,
            "item": claim.item,
            "started": claim.started,
            "state": str(state),
            **extra,
        }
        return json.dumps(doc).encode()

    def try_claim(self, stage: str, item: str) -> Claim | None:
        """Create the claim exclusively; None if another host (or thread) holds it or did it."""
        path = self.path(stage, item)
        make_dirs(path.parent)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        claim = Claim(stage, item, path, secrets.token_hex(8), self.wall())
        try:
            os.write(fd, self._content(claim, ClaimState.WORKING))
            durable_sync(fd)
        except BaseException:
            # A disk that filled up between create and write: leave no empty claim behind,
            # it would block the item until someone breaks it.
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        finally:
            os.close(fd)
        with self._mutex:
            self._held[path] = claim
        return claim

    def owns(self, claim: Claim) -> bool:
        content = read_claim(claim.path)
        return content is not None and content.get("token") == claim.token

    def _write_own(self, claim: Claim, data: bytes) -> bool:
        """Replace the claim's content, through a descriptor opened for this write alone,
        if the file at its path is still ours (our token); False if it is not.

        Opened, written, synced and closed each time: Samba freezes the write time other
        clients see while a handle stays open, so a held descriptor's heartbeats would not
        move the mtime. The token is read through the same descriptor that then writes,
        so a claim renamed away meanwhile is written, harmlessly, where it went.
        """
        try:
            fd = os.open(claim.path, os.O_RDWR)
        except FileNotFoundError:
            if not claim.path.parent.is_dir():  # the whole folder went: the share is away
                raise
            return False
        try:
            content = parse_claim(os.pread(fd, 1 << 16, 0))
            if content is None or content.get("token") != claim.token:
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            durable_sync(fd)
            return True
        finally:
            os.close(fd)

    def heartbeat(self, claim: Claim) -> bool:
        """Refresh the claim's mtime (server clock); False once the claim is lost.

        An I/O error is raised, not taken for a loss: a share answers EIO now and then, and
        the next heartbeat will most likely go through (the caller logs it).
        """
        with claim.lock:
            if claim.closed or claim.lost or claim.abandoned:
                return False
            if not self._write_own(claim, self._content(claim, ClaimState.WORKING)):
                claim.lost = True
            return not claim.lost

    def commit(self, claim: Claim, publish: Callable[[], Any], **record: Any) -> bool:
        """Run `publish` and mark the claim done; True only if the claim was ours throughout.

        Ownership is checked before and after `publish` (docs/protocol.md#commit). An owner
        paused in between (a Mac asleep) may find its claim broken and the item redone: its
        no-replace renames then fail (FileExistsError from `publish`: nothing of it stays
        visible), or they won the race and its output is the one published, whole and with
        its own sidecar. Either way a commit that lost its claim returns False, with
        `claim.published` saying which.
        """
        with claim.lock:
            if claim.closed or claim.abandoned or claim.lost or not self.owns(claim):
                claim.lost = claim.lost or not claim.abandoned
                return False
            try:
                publish()
            except FileExistsError:
                claim.lost = True  # another owner's output is in place: ours is not shown
                return False
            claim.published = True
            data = self._content(claim, ClaimState.DONE, finished=self.wall(), **record)
            # Rewritten in place: never removed or replaced (docs/protocol.md#commit).
            still_ours = self._write_own(claim, data)
            self._forget(claim)
            claim.lost = not still_ours
            return still_ours

    def release(self, claim: Claim) -> None:
        """Give the item back so any host can take it (on failure or shutdown)."""
        with claim.lock:
            if claim.closed:
                return
            if not claim.lost and self.owns(claim):
                with contextlib.suppress(FileNotFoundError):
                    claim.path.unlink()
            claim.abandoned = True
            self._forget(claim)

    def _forget(self, claim: Claim) -> None:
        """No longer ours to write (caller holds claim.lock)."""
        claim.closed = True
        with self._mutex:
            self._held.pop(claim.path, None)

    # -- stale claims ---------------------------------------------------------------------
    def stale_reason(self, path: Path, now: float) -> str | None:
        """Why the claim at `path` belongs to a dead owner, or None if it must be left alone."""
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        return self._stale(read_claim(path), now - mtime)

    def _stale(self, content: dict[str, Any] | None, age: float) -> str | None:
        if content is None:
            # Empty or unparseable: its owner died between create and write (a full disk,
            # a crash), or someone edited it. It may still be being written, so it is left
            # alone for a whole lease; after that it is broken like any stale claim.
            if age > self.lease_s:
                return f"unreadable claim, unchanged for {age:.0f} s (lease {self.lease_s:g} s)"
            return None
        if content.get("state") != ClaimState.WORKING:
            return None  # done: never broken
        if self._owner_gone(content):
            return "owner process is gone"
        if age > self.lease_s:
            return f"no heartbeat for {age:.0f} s (lease {self.lease_s:g} s)"
        return None

    def _owner_gone(self, content: dict[str, Any]) -> bool:
        """The owner's process is known gone: only decidable on the owner's own machine.

        Claims written before the machine tag existed carry only a host name; for them the
        host name stands in for the machine.
        """
        machine = content.get("machine")
        if machine is None and content.get("host") == self.host:
            machine = self.identity.machine
        return self.identity.process_gone(machine, content.get("pid"), content.get("pid_start"))

    def break_stale(self, stage: str, item: str) -> dict[str, Any] | None:
        """Break a stale claim; returns the dead owner's claim ({} if it was unreadable) if
        this host broke it."""
        path = self.path(stage, item)
        now = self.clock.now()
        try:
            mtime = path.stat().st_mtime
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        before = parse_claim(raw)
        if self._stale(before, now - mtime) is None:
            return None
        me = self.identity
        # `<item>.claim.<machine>.<pid>.<random>` in .emif/broken/: counted as an attempt
        name = held_name(path.name, CLAIM_BROKEN_MARK, hidden=False, machine=me.machine, pid=me.pid)
        target = self.broken_dir / stage / Path(item).parent / name
        make_dirs(target.parent)
        if break_by_rename(path, target, raw) is not Broken.BROKEN:
            return None
        return before if before is not None else {}

    def broken_count(self, stage: str, item: str) -> int:
        """How many times the item's worker died holding it: each counts as an attempt."""
        folder = self.broken_dir / stage / Path(item).parent
        prefix = Path(item).name + CLAIM_SUFFIX + "."
        try:
            return sum(1 for e in os.scandir(folder) if e.name.startswith(prefix))
        except FileNotFoundError:
            return 0


def forget_broken(broken_dir: Path, stage: str, item: str) -> None:
    """Reset an item's attempt count (``emif retry``)."""
    folder = broken_dir / stage / Path(item).parent
    prefix = Path(item).name + CLAIM_SUFFIX + "."
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.name.startswith(prefix):
                Path(entry.path).unlink(missing_ok=True)
