"""Which items of each accepted batch are still to make: not every image there, not failed.

Per batch it remembers how many items from the start are known finished, so each look
resumes there instead of walking a plan of 100 000 items again; an `emif retry` (a failure
record gone) starts every batch over.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from emif_daemon.intake.plans import Plan, PlannedItem
from emif_daemon.share.failure_records import FailureLog
from emif_daemon.share.layout import Layout, is_input_png
from emif_daemon.share.watch import TreeScanner

GENERATE = "generate"


@dataclass
class Batch:
    """An accepted prompts file and its plan."""

    name: str
    path: Path
    plan: Plan


class OpenItems:
    """The open items of batches, looked at from where the last look stopped."""

    def __init__(self, layout: Layout, relist_s: float = 0.0) -> None:
        self.outputs = TreeScanner(layout.generations, want=is_input_png, relist_s=relist_s)
        self.failures = FailureLog(layout.failed, GENERATE)
        self._cursor: dict[str, int] = {}
        self._failed_seen: set[str] = set()

    def of(self, batch: Batch) -> Iterator[PlannedItem]:
        """Items of `batch` still to make, lazily, from the first one not known finished."""
        done = self.outputs.scan()
        failed = self.failures.keys()
        if not failed >= self._failed_seen:  # `emif retry` made failed items pending again
            self._cursor.clear()
        self._failed_seen = failed
        start = self._cursor.get(batch.name, 0)
        for n, item in enumerate(batch.plan.items(start), start):
            finished = item.key in failed or all(x in done for x in item.output_names())
            if finished and n == start:
                start = n + 1
                self._cursor[batch.name] = start
            if not finished:
                yield item

    def count(self, batches: Sequence[Batch]) -> int:
        """How many items the batches have after their known-finished starts."""
        return sum(len(b.plan) - self._cursor.get(b.name, 0) for b in batches)

    def unmade(self, batch: Batch) -> list[PlannedItem]:
        """Every item of a batch whose images are not all there (done or not, failed or not)."""
        done = self.outputs.scan()
        return [i for i in batch.plan.items() if not all(n in done for n in i.output_names())]

    def forget(self, batch: str) -> None:
        self._cursor.pop(batch, None)
