"""Which items of each accepted batch are still to make, and whether an image found under an
item's name is the batch's own.

Per batch it remembers how many items from the start are known finished, so each look
resumes there instead of walking a plan of 100 000 items again; an `emif retry` (a failure
record gone) starts every batch over.

An image under a planned name counts as made by the batch only when its sidecar says so (its
`source` is the batch's name). Index reservations keep two batches from planning one name,
but a PNG can still be there first: a user's, one the acceptor's listing missed, or one made
from a plan published before reservations existed. Such an item is never counted done: it
fails, with a reason naming whose image it is. A PNG without a sidecar gets `PROOF_WAIT_S`
(a sidecar lands just after its image, and a Mac may answer "no such file" from its cache
for up to 30 s); then the sidecar a writer killed between the two renames left under its
temp name counts too.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emif_daemon.intake.plans import Plan, PlannedItem
from emif_daemon.share.atomic import read_regular
from emif_daemon.share.failure_records import FailureLog
from emif_daemon.share.held import TEMP_MARK, parse_held
from emif_daemon.share.layout import Layout, is_input_png
from emif_daemon.share.watch import TreeScanner

GENERATE = "generate"
PROOF_WAIT_S = 120.0
MAX_SIDECAR_BYTES = 2**20


@dataclass
class Batch:
    """An accepted prompts file and its plan."""

    name: str
    path: Path
    plan: Plan


class OpenItems:
    """The open items of batches, looked at from where the last look stopped."""

    def __init__(
        self, layout: Layout, relist_s: float = 0.0, now: Callable[[], float] = time.time
    ) -> None:
        self.layout = layout
        self.now = now  # the file server's clock: how old a PNG is
        self.outputs = TreeScanner(layout.generations, want=is_input_png, relist_s=relist_s)
        self.failures = FailureLog(layout.failed, GENERATE)
        self._cursor: dict[str, int] = {}
        self._failed_seen: set[str] = set()
        self._verdicts: dict[tuple[str, str], str] = {}  # "" = the batch's own image
        self.unsure: dict[str, set[str]] = {}  # batch → items whose image is not proven yet
        self.foreign: dict[str, tuple[str, str]] = {}  # item → (batch, reason): to record

    def of(self, batch: Batch) -> Iterator[PlannedItem]:
        """Items of `batch` still to make, lazily, from the first one not known finished:
        an item whose images are in place is not made again, whoever made them."""
        done = self.outputs.scan()
        failed = self.failures.keys()
        if not failed >= self._failed_seen:  # `emif retry` made failed items pending again
            self._cursor.clear()
            self._verdicts.clear()
        self._failed_seen = failed
        start = self._cursor.get(batch.name, 0)
        for n, item in enumerate(batch.plan.items(start), start):
            finished = item.key in failed or all(x in done for x in item.output_names())
            if finished and n == start:
                start = n + 1
                self._cursor[batch.name] = start
            if not finished:
                yield item

    def prove(self, batch: Batch) -> bool:
        """Once nothing is left to make: whether every image in place is known to be the
        batch's own or not (those that are not go to `foreign`, to be failed). False while
        one cannot be told yet (counted in `unsure`: work still coming). Each image's
        sidecar is read once, when its batch ends, never on the rounds before."""
        done = self.outputs.scan()
        failed = self.failures.keys()
        unsure = set()
        for item in batch.plan.items():
            if all(x in done for x in item.output_names()):
                verdict = self.verdict(batch, item)
                if verdict is None:
                    unsure.add(item.key)
                elif verdict and item.key not in failed:
                    self.foreign.setdefault(item.key, (batch.name, verdict))
        self.unsure[batch.name] = unsure
        return not unsure

    def verdict(self, batch: Batch, item: PlannedItem) -> str | None:
        """ "" if the item's images are the batch's own, why not if they are not, None while
        that cannot be told yet."""
        key = (batch.name, item.key)
        known = self._verdicts.get(key)
        if known is None:
            known = provenance(self.layout, batch.name, item, self.now)
            if known is not None:
                self._verdicts[key] = known
        return known

    def count(self, batches: Sequence[Batch]) -> int:
        """How many items the batches have after their known-finished starts."""
        return sum(len(b.plan) - self._cursor.get(b.name, 0) for b in batches)

    def finished(self, batch: Batch) -> bool:
        """Every item has its images in place or failed."""
        return next(self.of(batch), None) is None

    def summary(self, batch: Batch) -> tuple[int, list[tuple[str, str | None]]] | None:
        """(items made by the batch, [(item, reason)] of the others), after `prove`; None
        when an image is not proven yet, or a failure the listing showed is not there when
        its record is read (an `emif retry` a moment ago): not finished after all."""
        done = self.outputs.scan()
        made = 0
        failures: list[tuple[str, str | None]] = []
        for item in batch.plan.items():
            verdict = (
                self.verdict(batch, item) if all(x in done for x in item.output_names()) else "-"
            )
            if verdict is None:
                return None  # an image not proven yet: not finished
            if not verdict:
                made += 1
                continue
            record = self.failures.read(item.key)  # an open: what the server says now
            if record is None and item.key not in self.foreign:
                return None
            failures.append((item.key, record.reason if record else self.foreign[item.key][1]))
        return made, failures

    def forget(self, batch: str) -> None:
        self._cursor.pop(batch, None)
        self.unsure.pop(batch, None)
        self._verdicts = {k: v for k, v in self._verdicts.items() if k[0] != batch}


def provenance(
    layout: Layout, batch: str, item: PlannedItem, now: Callable[[], float]
) -> str | None:
    """Whether the images under `item`'s names were made from `batch` (see the module)."""
    for name in item.output_names():
        png = layout.generations / name
        doc = _sidecar(png.with_suffix(".json"))
        if doc is None:
            try:
                age = now() - png.stat().st_mtime
            except OSError:
                return None
            if age < PROOF_WAIT_S:
                return None
            doc = _held_sidecar(png.with_suffix(".json"))
        claim = f".emif/claims/{GENERATE}/{item.key}.claim"
        if doc is None:
            return (
                f"GENERATIONS/{name} is there without a sidecar saying it was made from "
                f"{batch}: not this batch's image (put there by hand?); move it away, delete "
                f"{claim} if there is one, and run `emif retry`"
            )
        if doc.get("source") != batch:
            return (
                f"GENERATIONS/{name} was made from {doc.get('source')!r} (prompt "
                f"{str(doc.get('prompt'))[:80]!r}), not from {batch}: two files planned this "
                f"name; move that image away, delete {claim}, and run `emif retry` to make "
                "this batch's"
            )
    return ""


def _sidecar(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(read_regular(path, MAX_SIDECAR_BYTES))
        if isinstance(doc, dict):
            return doc
    return None


def _held_sidecar(path: Path) -> dict[str, Any] | None:
    """A sidecar under its temp name: written whole before its image was renamed into place,
    by a writer killed before the sidecar's own rename."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            held = parse_held(entry.name, TEMP_MARK)
            if held is not None and held.name == path.name:
                doc = _sidecar(Path(entry.path))
                if doc is not None:
                    return doc
    return None
