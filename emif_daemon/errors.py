"""Every error class of the daemon, grouped by what the engine (or a command) must do when
one is raised."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class EmifError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(EmifError):
    """The configuration is wrong; each line of ``problems`` names a key and what to do."""

    def __init__(self, problems: list[str], path: str = "") -> None:
        self.problems = problems
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(problems))


class ServerUnavailable(EmifError):
    """The server cannot be reached: wait for it; the item is not charged an attempt."""


class TransientError(EmifError):
    """Worth another attempt after a backoff (HTTP 5xx, a read timeout, a broken image)."""


class PermanentItemError(EmifError):
    """Fail the item now: another attempt would fail the same way (HTTP 4xx, a bad input)."""


class StageUnavailable(EmifError):
    """A whole stage cannot run (for example its model checkpoint is missing)."""


class ClaimLost(EmifError):
    """Another daemon now holds the item: not an error, the item is simply not ours."""


class Shutdown(BaseException):
    """Raised inside a worker to unwind an item at shutdown.

    Inherits from BaseException because it is a shutdown signal: no ``except Exception``
    in stage code may swallow it.
    """


# -- the share and its files -------------------------------------------------------------


class ShareUnavailable(OSError):
    """The folder cannot be read at all (a network share that dropped)."""


class NotARegularFile(OSError):
    """A FIFO, device, socket or folder where a file was expected, or a file over the
    size limit: reading it could block for ever or exhaust memory. No retry helps."""


# -- commands ---------------------------------------------------------------------------


class NotMacOS(EmifError):
    """launchctl exists only on macOS."""


class LockBusy(EmifError):
    """Another host is building the gallery."""

    def __init__(self, lock: Path, holder: Mapping[str, Any] | None) -> None:
        who = holder or {}
        super().__init__(
            f"another host ({who.get('host', '?')}, pid {who.get('pid', '?')}, since "
            f"{who.get('since', '?')}) is building the gallery ({lock}); try again when it "
            "is done. A lock left by a dead process is broken after coordination.lease_s."
        )
