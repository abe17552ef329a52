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

from .files import NotARegularFile, atomic_write_json, read_regular, rename_noreplace
from .layout import Layout, is_ignored
from .logs import get_logger
from .names import name_key, safe_name
from .plan import Plan, expand
from .prompts import DEFAULT_LIMITS, Limits, parse
from .stage import EventSink


@dataclass(frozen=True)
class Expansion:
    """What turns a valid file into a plan, and the bounds it must keep (from the config)."""

    template: str
    negative_default: str
    base_payload: dict[str, Any]
    limits: Limits = DEFAULT_LIMITS


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
    """An accepted prompts file and its plan."""

    name: str
    path: Path
    plan: Plan


def is_prompts_name(name: str) -> bool:
    """`*.json` in any case; never a temp or hidden file, never an `.error.json` report."""
    lower = name.lower()
    return lower.endswith(".json") and not lower.endswith(".error.json") and not is_ignored(name)


def queued_files(layout: Layout) -> list[Path]:
    try:
        entries = list(os.scandir(layout.queue))
    except FileNotFoundError:
        return []
    return sorted(Path(e.path) for e in entries if e.is_file() and is_prompts_name(e.name))


def read_plans(layout: Layout) -> list[Plan]:
    """Every plan ever accepted on this root (for status)."""
    plans = []
    for path in sorted(layout.jobs.glob("*.plan.json")):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            plans.append(Plan.from_json(json.loads(path.read_bytes())))
    return plans


def plan_for(data: bytes, name: str, exp: Expansion) -> tuple[Plan | None, list[str]]:
    parsed = parse(data, exp.limits)
    if parsed.problems:
        return None, parsed.problems
    plan = expand(
        parsed,
        file_sha=hashlib.sha256(data).hexdigest(),
        template=exp.template,
        negative_default=exp.negative_default,
        base_payload=exp.base_payload,
        source=name,
    )
    return plan, []


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


def _folder_names(folder: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(folder) if e.is_dir() and not is_ignored(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def existing_spelling_problems(plan: Plan, generations: Path) -> list[str]:
    """Names that would land in an existing folder spelled differently (case, or the
    decomposed form a Mac's SMB client lists): on a Mac they are the same folder."""
    problems: list[str] = []
    nations = {name_key(safe_name(n)): safe_name(n) for n in _folder_names(generations)}
    for job in plan.jobs:
        there = nations.get(name_key(job.nation))
        if there is not None and there != job.nation:
            problems.append(
                f"{job.loc}.nation: {job.nation!r} differs only in case from the existing "
                f"folder GENERATIONS/{there}; write {there!r}"
            )
            continue
        categories = {
            name_key(safe_name(c)): safe_name(c)
            for c in _folder_names(generations / (there or job.nation))
        }
        known = categories.get(name_key(job.category))
        if known is not None and known != job.category:
            problems.append(
                f"{job.loc}.category: {job.category!r} differs only in case from the existing "
                f"folder GENERATIONS/{job.nation}/{known}; write {known!r}"
            )
    return problems


class Inbox:
    def __init__(self, layout: Layout, exp: Expansion, on_event: EventSink) -> None:
        self.layout = layout
        self.exp = exp
        self.on_event = on_event
        self.log = get_logger()
        self._plans: dict[str, tuple[tuple[int, int], Plan]] = {}

    def take(self, path: Path) -> None:
        """Accept or reject one settled queue file; losing the race to another host is fine.

        The file is renamed into accepted/ first (one host wins), and the plan is read from
        the renamed file: a file replaced in queue/ meanwhile is planned from what was
        accepted, never from what was there before.
        """
        target = _move_unique(path, self.layout.accepted, avoid=(self.layout.done,))
        if target is None:
            return
        plan, problems = self._plan_of(target)
        if plan is None:
            self._reject(target, path.name, problems)
            return
        atomic_write_json(self.plan_path(target.name), plan.to_json())
        self.log.info(
            "prompts_accepted",
            file=path.name,
            accepted_as=target.name,
            items=len(plan),
            images=sum(j.count * j.images for j in plan.jobs),
            skipped_existing=self._existing(plan),
        )

    def _plan_of(self, accepted: Path) -> tuple[Plan | None, list[str]]:
        try:
            data = read_regular(accepted, self.exp.limits.max_bytes)
        except NotARegularFile as exc:
            return None, [f"$: {exc.strerror}"]
        plan, problems = plan_for(data, accepted.name, self.exp)
        if plan is not None:
            problems = existing_spelling_problems(plan, self.layout.generations)
        return (plan if not problems else None), problems

    def _reject(self, accepted: Path, name: str, problems: list[str]) -> None:
        target = _move_unique(accepted, self.layout.rejected)
        if target is None:
            return  # another host rejected it first
        atomic_write_json(
            target.with_name(target.stem + ".error.json"), {"file": name, "problems": problems}
        )
        self.log.error("prompts_rejected", file=name, moved_to=str(target), errors=problems)
        self.on_event("prompts_rejected", {"file": name, "problems": problems})

    def _existing(self, plan: Plan) -> int:
        """Items whose images are all there already: one listing per folder, not a stat
        per image."""
        present: set[str] = set()
        for nation, category in {(j.nation, j.category) for j in plan.jobs}:
            with contextlib.suppress(OSError):
                folder = self.layout.generations / nation / category
                present.update(f"{nation}/{category}/{e.name}" for e in os.scandir(folder))
        if not present:
            return 0
        return sum(1 for i in plan.items() if all(n in present for n in i.output_names()))

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
            if not is_prompts_name(entry.name):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            cached = self._plans.get(entry.name)
            if cached is None or cached[0] != sig:
                plan = self._load_plan(Path(entry.path))
                if plan is None:
                    continue
                self._plans[entry.name] = (sig, plan)
            out.append(Batch(entry.name, Path(entry.path), self._plans[entry.name][1]))
        return out

    def _load_plan(self, accepted: Path) -> Plan | None:
        path = self.plan_path(accepted.name)
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            return Plan.from_json(json.loads(path.read_bytes()))
        # The host that accepted it died before writing the plan: derive it again.
        try:
            plan, problems = self._plan_of(accepted)
        except FileNotFoundError:
            return None
        if plan is None:
            self._reject(accepted, accepted.name, problems)
            return None
        atomic_write_json(path, plan.to_json())
        return plan

    def finish(self, batch: Batch, summary: BatchSummary) -> None:
        """Every item exists or failed: move the file to queue/done (one host wins)."""
        if _move_unique(batch.path, self.layout.done) is None:
            return
        self._plans.pop(batch.name, None)
        self.log.info("batch_done", file=batch.name, **summary.fields())
        self.on_event("batch_done", {"file": batch.name, **summary.fields()})
