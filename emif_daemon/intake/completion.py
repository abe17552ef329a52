"""A summary when a batch is through every enabled stage: counts per stage, failures
with their reasons, duration, output folders; said once across all hosts (the first to
publish `.emif/jobs/<stem>.complete.json` says it)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emif_daemon.events import EventSink
from emif_daemon.intake.plans import Plan, PlanBook, plan_path
from emif_daemon.logs import get_logger
from emif_daemon.share.atomic import publish_new
from emif_daemon.share.failure_records import FailureLog
from emif_daemon.share.layout import Layout, segment_output, upscale_output


def batch_summary(layout: Layout, plan: Plan, stages: tuple[str, ...]) -> dict[str, Any] | None:
    """Per-stage counts of a batch whose generate items are all done or failed, or None
    while any image of it is still on its way through a later enabled stage."""
    failed = {s: FailureLog(layout.failed, s) for s in stages}
    keys = {s: log.keys() for s, log in failed.items()}
    counts: dict[str, dict[str, int]] = {s: {"done": 0, "failed": 0} for s in stages}
    reasons: list[dict[str, Any]] = []
    for item in plan.items():
        made = [n for n in item.output_names() if (layout.generations / n).exists()]
        if len(made) < item.images:
            if item.key not in keys.get("generate", set()):
                return None
            counts["generate"]["failed"] += 1
            reasons.append(_reason(failed["generate"], "generate", item.key))
            continue
        counts["generate"]["done"] += 1
        for name in made:
            if not _through(layout, name, stages, keys, failed, counts, reasons):
                return None
    return {"stages": counts, "failures": reasons}


def _through(
    layout: Layout,
    name: str,
    stages: tuple[str, ...],
    keys: dict[str, set[str]],
    failed: dict[str, FailureLog],
    counts: dict[str, dict[str, int]],
    reasons: list[dict[str, Any]],
) -> bool:
    """Follow one image through upscale and segment; False while it is not through."""
    upscaled = upscale_output(name)
    for stage, key, output in (
        ("upscale", name, layout.upscaled / upscaled),
        ("segment", upscaled, layout.segments / segment_output(upscaled)),
    ):
        if stage not in stages:
            return True
        if output.exists():
            counts[stage]["done"] += 1
            continue
        if key in keys[stage]:
            counts[stage]["failed"] += 1
            reasons.append(_reason(failed[stage], stage, key))
            return True
        return False
    return True


def _reason(log: FailureLog, stage: str, key: str) -> dict[str, Any]:
    record = log.read(key)
    return {"stage": stage, "item": key, "reason": record.reason if record else None}


class CompletionReporter:
    """Looks at finished batches now and then; the first host to see one through says so."""

    def __init__(
        self,
        layout: Layout,
        stages: tuple[str, ...],
        events: EventSink,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.layout = layout
        self.stages = stages
        self.events = events
        self.every_s = every_s  # the rescan interval: no batch finishes faster than seen
        self.clock = clock
        self.log = get_logger()
        self._last: float | None = None
        self._said: set[str] = set()
        self.book = PlanBook(layout)

    def check(self, *, now: bool = False) -> None:
        """Look at finished batches, at most every `every_s` unless `now`."""
        due = self._last is None or self.clock() - self._last >= self.every_s
        if "generate" not in self.stages or not (now or due):
            return
        self._last = self.clock()
        for plan in self.book.plans():
            finished = self.layout.done / plan.source
            marker = self.layout.jobs / (Path(plan.source).stem + ".complete.json")
            if plan.source in self._said or not finished.exists() or marker.exists():
                continue
            summary = batch_summary(self.layout, plan, self.stages)
            if summary is None:
                continue
            self._said.add(plan.source)
            self._publish(plan, finished, marker, summary)

    def _publish(self, plan: Plan, finished: Path, marker: Path, summary: dict[str, Any]) -> None:
        accepted = plan_path(self.layout, plan.source)
        started = accepted.stat().st_mtime if accepted.exists() else finished.stat().st_mtime
        doc = {
            "file": plan.source,
            **summary,
            "seconds": round(time.time() - started),
            "outputs": sorted({f"{j.nation}/{j.category}" for j in plan.jobs}),
            "folders": [str(self.layout.stage_output(s)) for s in self.stages],
        }
        try:
            publish_new(marker, json.dumps(doc, indent=2, ensure_ascii=False).encode())
        except FileExistsError:
            return  # another host said it
        self.log.info("batch_complete", **doc)
        self.events("batch_complete", doc)
