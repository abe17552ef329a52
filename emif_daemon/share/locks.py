"""One host at a time for a job on the shared root (the gallery's rebuild).

The same rules as a claim (docs/protocol.md#claims): the lock is a file created with
O_CREAT|O_EXCL, so the file server decides who holds it; the holder rewrites it as a heartbeat,
so its mtime is stamped by the file server; its age is measured against the file server's
clock (clock.ServerClock), never the local one, so skew between Macs does not matter. A stale
lock (no heartbeat for `stale_s`, or its process known gone on this machine) is broken by
renaming it to a unique name, so only one breaker wins; a lock taken afresh in between is put
back.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from emif_daemon.logs import get_logger
from emif_daemon.share.atomic import Broken, break_by_rename, make_dirs
from emif_daemon.share.claims import parse_claim
from emif_daemon.share.clock import ServerClock, utc_stamp
from emif_daemon.share.held import BROKEN_MARK, held_name
from emif_daemon.share.identity import HostIdentity


class HostLock:
    """A lock file on the share; `acquire` never waits, `heartbeat` keeps it, `release` ends it."""

    def __init__(
        self,
        path: Path,
        clock: ServerClock,
        identity: HostIdentity,
        *,
        stale_s: float,
        beat_s: float,
    ) -> None:
        self.path = path
        self.clock = clock
        self.identity = identity
        self.stale_s = stale_s
        self.beat_s = beat_s
        self.held = False
        self._token = secrets.token_hex(8)
        self._beaten = 0.0
        self.log = get_logger()

    def _content(self) -> bytes:
        me = self.identity
        return json.dumps(
            {
                "host": me.host,
                "machine": me.machine,
                "pid": me.pid,
                "pid_start": me.pid_start,
                "token": self._token,
                "since": utc_stamp(),
            }
        ).encode()

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now, as it says; None if nobody does or it cannot be read."""
        with contextlib.suppress(OSError):
            return parse_claim(self.path.read_bytes())
        return None

    def acquire(self) -> bool:
        """Take the lock if it is free or stale; False if a live holder has it."""
        if self.held:
            return True
        if self._create():
            return True
        return self._break_stale() and self._create()

    def _create(self) -> bool:
        make_dirs(self.path.parent)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self._content())
            os.fsync(fd)
        except BaseException:
            # A full share between create and write: leave no empty lock behind.
            os.close(fd)
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise
        os.close(fd)
        self.held = True
        self._beaten = time.monotonic()
        return True

    def owns(self) -> bool:
        holder = self.holder()
        return holder is not None and holder.get("token") == self._token

    def heartbeat(self) -> None:
        """Rewrite the lock (its mtime is then the server's now) at most every `beat_s`.

        Opened, written and closed each time: Samba freezes the write time of a handle held
        open. A lock found taken over (we were paused past `stale_s`) is no longer ours.
        """
        if not self.held or time.monotonic() - self._beaten < self.beat_s:
            return
        self._beaten = time.monotonic()
        try:
            holder = parse_claim(self.path.read_bytes())
        except FileNotFoundError:
            holder = None
        except OSError:
            return  # the share did not answer: look again at the next beat
        if holder is None or holder.get("token") != self._token:
            self.held = False
            self.log.warning("lock_lost", lock=str(self.path))
            return
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.pwrite(fd, self._content(), 0)
                os.fsync(fd)
            finally:
                os.close(fd)

    def release(self) -> None:
        if self.held and self.owns():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.held = False

    def stale_reason(self, content: dict[str, Any] | None, age: float) -> str | None:
        """Why a lock whose last write is `age` seconds old (server clock) may be broken."""
        if content is not None and self.identity.process_gone(
            content.get("machine"), content.get("pid"), content.get("pid_start")
        ):
            return "its process is gone"
        if age > self.stale_s:
            return f"no heartbeat for {age:.0f} s (stale after {self.stale_s:g} s)"
        return None

    def _break_stale(self) -> bool:
        """Break the lock if it is stale; True if it is gone now (broken here or released)."""
        try:
            now = self.clock.now()
            mtime = self.path.stat().st_mtime
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return True
        before = parse_claim(raw)
        reason = self.stale_reason(before, now - mtime)
        if reason is None:
            return False
        me = self.identity
        held = held_name(self.path.name, BROKEN_MARK, hidden=False, machine=me.machine, pid=me.pid)
        target = self.path.with_name(held)
        broken = break_by_rename(self.path, target, raw)
        if broken is Broken.GONE:
            return True
        if broken is Broken.TAKEN:
            return False
        target.unlink(missing_ok=True)
        owner = (before or {}).get("host", "?")
        self.log.warning("lock_broken", lock=str(self.path), owner=owner, reason=reason)
        return True
