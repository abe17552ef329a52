"""The file server's clock (docs/protocol.md#clock).

Ages of claims and temp files are measured against the file server's time — the mtime it
stamps on a file we have just written — never against the local clock, so skew between
Macs does not matter. The probe is opened, written, synced and closed each time: Samba
keeps the write time of a handle held open frozen, so a long-lived descriptor would stop
the clock.
"""

from __future__ import annotations

import calendar
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

PROBE_REUSE_S = 1.0  # one write a second is plenty against leases of tens of seconds
UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # every time the daemon writes for people: ISO 8601, UTC


def utc_stamp(t: float | None = None) -> str:
    """`t` (default: now) as the daemon writes times in records, sidecars and metrics."""
    return time.strftime(UTC_FORMAT, time.gmtime(time.time() if t is None else t))


def parse_utc(text: str) -> float | None:
    """Seconds since the epoch of a time written by `utc_stamp` (fractions ignored); None
    if it is not one."""
    try:
        return float(calendar.timegm(time.strptime(text[:19], UTC_FORMAT[:-1])))
    except ValueError:
        return None


class ServerClock:
    """`now()` on the file server; thread-safe; interpolates with the monotonic clock
    between probes."""

    def __init__(
        self,
        folder: Path,
        name: str,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe = folder / name
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._probed = 0.0
        self._probed_at: float | None = None

    def now(self) -> float:
        """The file server's current time; raises OSError when the share cannot be written."""
        with self._lock:
            if self._probed_at is not None:
                elapsed = self._monotonic() - self._probed_at
                if elapsed < PROBE_REUSE_S:
                    return self._probed + elapsed
            # The folder only, never its parents: no tree where a share should be mounted.
            self.probe.parent.mkdir(exist_ok=True)
            fd = os.open(self.probe, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b"x")
                os.fsync(fd)
                self._probed = os.fstat(fd).st_mtime
            finally:
                os.close(fd)
            self._probed_at = self._monotonic()
            return self._probed

    def now_or_local(self) -> float:
        """For read-only views (status): the local clock when the root cannot be written."""
        try:
            return self.now()
        except OSError:
            return time.time()

    def close(self) -> None:
        """Remove the probe file (at shutdown)."""
        self.probe.unlink(missing_ok=True)
