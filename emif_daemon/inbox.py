"""The queue folder: accept, reject and finish prompts files (docs/architecture.md#the-data-path).

A file is accepted by renaming it from ``queue/`` into ``queue/accepted/``: one host wins.
The plan (its expanded items) is a pure function of the accepted bytes, so every host
computes the same one; it is also written to ``.emif/jobs/`` for ``emif retry`` and status.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import atomic_write_json, rename_noreplace
from .layout import Layout, is_ignored
from .logs import get_logger
from .prompts import PlannedItem, expand, items_from_plan, parse, plan_document
from .stage import EventSink


@dataclass(frozen=True)
class Expansion:
    template: str
    negative_default: str
    base_payload: dict[str, Any]


@dataclass(frozen=True)
class BatchSummary:
    """How a prompts file ended: logged as `batch_done` and sent to listeners."""

    items: int
    done: int
    failed: int
    failures: list[dict[str, str | None]]

    def fields(self) -> dict[str, Any]:
        return {"items": self.items, "done": self.done, "failed": self.failed,
                "failures": self.failures}  # fmt: skip


@dataclass
class Batch:
    """An accepted prompts file and its items."""

    name: str
    path: Path
    items: list[PlannedItem]


def queued_files(layout: Layout) -> list[Path]:
    try:
        entries = list(os.scandir(layout.queue))
    except FileNotFoundError:
        return []
    return sorted(
        Path(e.path)
        for e in entries
        if e.is_file() and e.name.lower().endswith(".json") and not is_ignored(e.name)
    )


def read_plans(layout: Layout) -> list[list[PlannedItem]]:
    """Every plan ever accepted on this root (for status)."""
    plans = []
    for path in sorted(layout.jobs.glob("*.plan.json")):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            plans.append(items_from_plan(json.loads(path.read_bytes())))
    return plans


def plan_for(data: bytes, name: str, exp: Expansion) -> tuple[list[PlannedItem], list[str]]:
    parsed = parse(data)
    if parsed.problems:
        return [], parsed.problems
    sha = hashlib.sha256(data).hexdigest()
    items = expand(
        parsed,
        file_sha=sha,
        template=exp.template,
        negative_default=exp.negative_default,
        base_payload=exp.base_payload,
    )
    return items, []


def _move_unique(src: Path, folder: Path, avoid: tuple[Path, ...] = ()) -> Path | None:
    """Rename `src` into `folder` under a name not taken yet; None if another host won.

    Names also taken in `avoid` are skipped, so a batch keeps one name from accepted/ to
    done/ (failure records and `emif retry` refer to it).
    """
    stem, suffix = src.stem, src.suffix
    for n in range(1, 1000):
        target = folder / (src.name if n == 1 else f"{stem}-{n}{suffix}")
        if any((other / target.name).exists() for other in avoid):
            continue
        try:
            rename_noreplace(src, target)
            return target
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None
    raise OSError(f"no free name for {src.name} in {folder}")


class Inbox:
    def __init__(self, layout: Layout, exp: Expansion, on_event: EventSink) -> None:
        self.layout = layout
        self.exp = exp
        self.on_event = on_event
        self.log = get_logger()
        self._plans: dict[str, tuple[tuple[int, int], list[PlannedItem]]] = {}

    def take(self, path: Path) -> None:
        """Accept or reject one settled queue file; losing the race to another host is fine."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        items, problems = plan_for(data, path.name, self.exp)
        if problems:
            target = _move_unique(path, self.layout.rejected)
            if target is None:
                return
            atomic_write_json(
                target.with_name(target.stem + ".error.json"),
                {"file": path.name, "problems": problems},
            )
            self.log.error(
                "prompts_rejected", file=path.name, moved_to=str(target), errors=problems
            )
            self.on_event("prompts_rejected", {"file": path.name, "problems": problems})
            return
        target = _move_unique(path, self.layout.accepted, avoid=(self.layout.done,))
        if target is None:
            return
        sha = hashlib.sha256(data).hexdigest()
        atomic_write_json(self.plan_path(target.name), plan_document(target.name, sha, items))
        existing = sum(
            1
            for item in items
            if all((self.layout.generations / n).exists() for n in item.output_names())
        )
        self.log.info(
            "prompts_accepted",
            file=path.name,
            accepted_as=target.name,
            items=len(items),
            images=sum(i.images for i in items),
            skipped_existing=existing,
        )

    def plan_path(self, name: str) -> Path:
        return self.layout.jobs / (Path(name).stem + ".plan.json")

    def batches(self) -> list[Batch]:
        """Every accepted file with its plan (cached per file size and mtime)."""
        out = []
        try:
            entries = sorted(os.scandir(self.layout.accepted), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.name.endswith(".json") or is_ignored(entry.name):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            cached = self._plans.get(entry.name)
            if cached is None or cached[0] != sig:
                items = self._load_plan(Path(entry.path))
                if items is None:
                    continue
                self._plans[entry.name] = (sig, items)
            out.append(Batch(entry.name, Path(entry.path), self._plans[entry.name][1]))
        return out

    def _load_plan(self, accepted: Path) -> list[PlannedItem] | None:
        plan = self.plan_path(accepted.name)
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            return items_from_plan(json.loads(plan.read_bytes()))
        try:  # the host that accepted it died before writing the plan: derive it again
            data = accepted.read_bytes()
        except FileNotFoundError:
            return None
        items, problems = plan_for(data, accepted.name, self.exp)
        if problems:
            return None
        atomic_write_json(
            plan, plan_document(accepted.name, hashlib.sha256(data).hexdigest(), items)
        )
        return items

    def finish(self, batch: Batch, summary: BatchSummary) -> None:
        """Every item exists or failed: move the file to queue/done (one host wins)."""
        if _move_unique(batch.path, self.layout.done) is None:
            return
        self._plans.pop(batch.name, None)
        self.log.info("batch_done", file=batch.name, **summary.fields())
        self.on_event("batch_done", {"file": batch.name, **summary.fields()})
