"""Requests in flight to one server: at most N, the most urgent stage first."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
from collections.abc import Iterator


class Limiter:
    """At most `slots` requests in flight; waiting callers are served highest priority first."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._cond = threading.Condition()
        self._queue: list[tuple[int, int]] = []
        self._seq = itertools.count()

    @contextlib.contextmanager
    def slot(self, priority: int) -> Iterator[None]:
        ticket = (-priority, next(self._seq))
        with self._cond:
            heapq.heappush(self._queue, ticket)
            while not (self._free > 0 and self._queue[0] == ticket):
                self._cond.wait()
            heapq.heappop(self._queue)
            self._free -= 1
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()
