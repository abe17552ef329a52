"""`--once`: deciding that everything discoverable now is done.

The invariant: the run is drained when no item is in hand, no round is under way (a
round's intake may be accepting a prompts file), and every stage has either retired (it is
unavailable) or finished an idle round that began after the last finished item — whose
output may be another stage's input, so an idle round that began before it proves nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

_RETIRED = -1


class DrainDetector:
    """Thread-safe; workers report rounds and items, the engine waits on `drained`."""

    def __init__(self, stages: Iterable[str]) -> None:
        self._stages = tuple(stages)
        self._lock = threading.Lock()
        self._finished = 0  # items finished so far: the "activity" rounds are measured by
        self._in_hand = 0
        self._rounds = 0  # rounds under way, all workers together
        self._idle_since: dict[str, int] = {}
        self.drained = threading.Event()

    def round_started(self) -> int:
        """A round begins; its token is how many items had finished by then. Every round
        started must be ended with `round_ended`."""
        with self._lock:
            self._rounds += 1
            return self._finished

    def round_ended(self) -> None:
        with self._lock:
            self._rounds -= 1

    def item_started(self, stage: str) -> None:
        """`stage` took an item: its earlier idle round no longer speaks for it (the item
        may be given back unfinished and be pending again)."""
        with self._lock:
            self._in_hand += 1
            if self._idle_since.get(stage) != _RETIRED:
                self._idle_since.pop(stage, None)

    def item_finished(self, *, finished: bool) -> None:
        """An item left our hands; `finished` when it will not come back (its output may
        be new input). Both in one step, so no idle worker sees "nobody busy" before the
        activity this item caused."""
        with self._lock:
            self._in_hand -= 1
            if finished:
                self._finished += 1
            self._check()

    def idle(self, stage: str, token: int) -> bool:
        """`stage` found nothing to do in the round that began at `token`; True if drained."""
        with self._lock:
            self._idle_since[stage] = token
            self._check()
        return self.drained.is_set()

    def retire(self, stage: str) -> None:
        """`stage` will do nothing more in this run; it never holds draining up."""
        with self._lock:
            self._idle_since[stage] = _RETIRED
            self._check()

    def _check(self) -> None:
        if self._in_hand or self._rounds or len(self._idle_since) < len(self._stages):
            return
        if all(v in (_RETIRED, self._finished) for v in self._idle_since.values()):
            self.drained.set()
