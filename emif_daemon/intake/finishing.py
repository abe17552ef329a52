"""The end of a batch: what it made and what failed, said once (`batch_done`), and items
whose name holds another file's image failed with the reason (open_items.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emif_daemon.intake.open_items import GENERATE, Batch, OpenItems
from emif_daemon.intake.queue_files import move_unique
from emif_daemon.share.failure_records import FailureRecord
from emif_daemon.share.layout import Layout


@dataclass(frozen=True)
class BatchDone:
    """How a prompts file ended: logged as `batch_done` and sent to listeners. `done`
    counts items whose images this batch made; every other item is in `failures` with its
    reason."""

    items: int
    done: int
    failed: int
    failures: list[dict[str, str | None]]

    def fields(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "done": self.done,
            "failed": self.failed,
            "failures": self.failures,
        }


def finish_batch(layout: Layout, open_items: OpenItems, batch: Batch) -> BatchDone | None:
    """Move a batch whose every item is made or failed to queue/done (one host wins); None
    if it is not finished after all (a failure record gone a moment ago) or another host
    moved it. The caller holds the intake lock."""
    summary = open_items.summary(batch)
    if summary is None or not batch.path.exists():
        return None
    made, failures = summary
    if move_unique(batch.path, layout.done) is None:
        return None
    return BatchDone(
        items=len(batch.plan),
        done=made,
        failed=len(failures),
        failures=[{"item": key, "reason": reason} for key, reason in failures],
    )


def record_foreign(open_items: OpenItems, host: str, log: Any) -> list[FailureRecord]:
    """Write the failure record of each item found holding another file's image; the
    records written (one that cannot be written is tried again next round)."""
    written = []
    for key, (batch, reason) in list(open_items.foreign.items()):
        record = FailureRecord.now(GENERATE, key, reason, 0, host, batch)
        try:
            open_items.failures.record(record)
        except OSError as exc:
            log.error("failure_record_failed", item=key, reason=reason, error=str(exc))
            continue
        del open_items.foreign[key]
        log.error("item_failed", stage=GENERATE, item=key, reason=reason, batch=batch)
        written.append(record)
    return written
