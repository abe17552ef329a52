"""What can come of an item and of a round, and what an error from a stage means.

Kept apart from the engine so the policy reads as one table and is tested without threads
(docs/architecture.md#outcomes).
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from emif_daemon.engine.stage import StageResult
from emif_daemon.errors import (
    ClaimLost,
    PermanentItemError,
    ServerUnavailable,
    Shutdown,
    StageUnavailable,
    TransientError,
)


class ItemOutcome(StrEnum):
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped_existing"  # its output appeared meanwhile (another host, a user)
    RELEASED = "released"  # given back unfinished: shutdown, claim lost, server down

    @property
    def finished(self) -> bool:
        """The item will not come back: its output may be another stage's input."""
        return self is not ItemOutcome.RELEASED

    @property
    def metered(self) -> bool:
        """Worth a metrics row: the stage did (or tried) the work."""
        return self in (ItemOutcome.DONE, ItemOutcome.FAILED)


class RoundOutcome(StrEnum):
    WORKED = "worked"  # an item was processed: look again at once
    BLOCKED = "blocked"  # others hold the items, we are paused, or the share is away
    SETTLING = "settling"  # an input is still being written: look again soon
    IDLE = "idle"  # nothing to do


class RunOutcome(StrEnum):
    """How a whole run ended; the command line maps it to an exit code."""

    DRAINED = "drained"  # --once: everything discoverable is done
    PROBLEMS = "problems"  # --once: items failed (now or before), or a stage is off
    STOPPED = "stopped"  # asked to stop (a signal, a host-id clash)
    SERVER_GAVE_UP = "server_gave_up"  # --once: a server did not answer for once_wait_s


class Verdict(Enum):
    """What the engine does with an item after its stage raised."""

    GIVE_BACK = "give back quietly"  # shutdown, or another host has it now
    WAIT_FOR_SERVER = "give back, wait for the server"  # no attempt charged
    WAIT_FOR_SPACE = "give back, wait for space on the share"  # no attempt charged
    STAGE_DOWN = "give back, the stage stops"  # e.g. its model cannot load
    FAIL_NOW = "fail the item"  # another attempt would fail the same way
    RETRY = "retry after a backoff"  # an attempt is charged


def verdict_for(exc: BaseException) -> Verdict:
    """The one place that maps an error class to what happens to the item."""
    if isinstance(exc, Shutdown | ClaimLost):
        return Verdict.GIVE_BACK
    if isinstance(exc, ServerUnavailable):
        return Verdict.WAIT_FOR_SERVER
    if share_full(exc):
        return Verdict.WAIT_FOR_SPACE
    if isinstance(exc, StageUnavailable):
        return Verdict.STAGE_DOWN
    if isinstance(exc, PermanentItemError):
        return Verdict.FAIL_NOW
    return Verdict.RETRY  # TransientError, and bugs: a stage error must not stop the daemon


def share_full(exc: BaseException) -> bool:
    """The share (or the user's quota on it) is full: nobody's fault, it passes."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def unclaimable(exc: BaseException) -> bool:
    """The item's own claim cannot be made (a name over 255 bytes, a folder in its place):
    a fault of that item's name alone, failed with the reason, never the stage's."""
    return isinstance(exc, OSError) and exc.errno in (
        errno.ENAMETOOLONG,
        errno.EISDIR,
        errno.ENOTDIR,
    )


def reason_for(exc: BaseException) -> str:
    """The failure reason recorded for an error: its own message, or its class for a bug."""
    if isinstance(exc, TransientError | PermanentItemError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class ItemResult:
    outcome: ItemOutcome
    result: StageResult | None = None
    seconds: float = 0.0


@dataclass
class StageStats:
    """This daemon's counts for one stage since it started (progress, host report)."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    busy: int = 0  # items in hand (a stage may have more than one worker)
    started: float = field(default_factory=time.monotonic)

    def counts(self) -> dict[str, int]:
        return {
            "done": self.done,
            "failed": self.failed,
            "pending": self.pending,
            "busy": self.busy,
        }
