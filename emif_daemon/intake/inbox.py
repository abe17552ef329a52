"""The queue folder: accept, reject and finish prompts files (docs/architecture.md#the-data-path).

A file is accepted by renaming it from ``queue/`` into ``queue/accepted/``: one host wins.
Its plan is then made under the share's intake lock, its indices continuing after every
index planned or present for each nation/category (allocation.py), and published in
``.emif/jobs/``: from then on the names are fixed, and every host reads the same plan.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emif_daemon.errors import NotARegularFile
from emif_daemon.events import EventSink
from emif_daemon.intake.allocation import index_use, overlap_problems
from emif_daemon.intake.plans import Plan, PlanBook, expand, has_plan, publish_plan
from emif_daemon.intake.prompts import DEFAULT_LIMITS, Limits, parse
from emif_daemon.intake.queue_files import is_prompts_name, move_unique
from emif_daemon.logs import get_logger
from emif_daemon.share.atomic import (
    atomic_write_json,
    read_regular,
)
from emif_daemon.share.layout import Layout, is_ignored
from emif_daemon.share.names import name_key, safe_name


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
        return {
            "items": self.items,
            "done": self.done,
            "failed": self.failed,
            "failures": self.failures,
        }


@dataclass
class Batch:
    """An accepted prompts file and its plan."""

    name: str
    path: Path
    plan: Plan


RECENT_WRITE_S = 30.0


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


def _unlocked() -> contextlib.AbstractContextManager[bool]:
    return contextlib.nullcontext(True)


class Inbox:
    """queue/ → accepted/ (or rejected/) → done/, with each accepted file's plan.

    `lock` serialises planning across hosts (allocation.intake_lock): indices are chosen
    against every plan and image there is, and two files must not choose at once. `now`
    is the file server's clock: an accepted file left without a plan for `stale_s` was
    accepted by a host that died, and any host plans it.
    """

    def __init__(
        self,
        layout: Layout,
        exp: Expansion,
        on_event: EventSink,
        lock: Callable[[], contextlib.AbstractContextManager[bool]] = _unlocked,
        now: Callable[[], float] = time.time,
        stale_s: float = 60.0,
    ) -> None:
        self.layout = layout
        self.exp = exp
        self.on_event = on_event
        self.lock = lock
        self.now = now
        self.stale_s = stale_s
        self.log = get_logger()
        self.book = PlanBook(layout)
        self._plans: dict[str, tuple[tuple[int, int], Plan]] = {}  # by accepted file's stat
        self._accepting: dict[str, str] = {}  # accepted by us, not planned yet → queue name

    def take(self, path: Path) -> None:
        """Accept or reject one settled queue file; losing the race to another host is fine.

        The file is renamed into accepted/ first (one host wins), and the plan is read from
        the renamed file: a file replaced in queue/ meanwhile is planned from what was
        accepted, never from what was there before.
        """
        target = move_unique(path, self.layout.accepted, avoid=(self.layout.done,))
        if target is None:
            return
        self._accepting[target.name] = path.name
        self._settle(target)

    def plan_waiting(self) -> None:
        """Plan the accepted files still without one: ours that waited for the lock, and
        those of an acceptor that died before planning."""
        try:
            entries = list(os.scandir(self.layout.accepted))
        except FileNotFoundError:
            return
        for entry in entries:
            if not is_prompts_name(entry.name) or has_plan(self.layout, entry.name):
                continue
            mine = entry.name in self._accepting
            with contextlib.suppress(FileNotFoundError):
                if mine or self.now() - entry.stat().st_mtime > self.stale_s:
                    self._settle(Path(entry.path))

    def unplanned(self) -> int:
        """Files this host accepted and has not planned yet (the intake lock was busy):
        work that is coming, so a round that saw none of their items is not idle."""
        return sum(
            1
            for name in list(self._accepting)
            if (self.layout.accepted / name).exists() and not has_plan(self.layout, name)
        )

    def _settle(self, accepted: Path) -> None:
        """Plan (or reject) an accepted file under the intake lock; if another host holds
        the lock, the next round tries again."""
        shown = self._accepting.get(accepted.name, accepted.name)
        with self.lock() as held:
            if not held:
                return
            self._accepting.pop(accepted.name, None)
            if has_plan(self.layout, accepted.name):
                return  # another host planned it meanwhile
            plan, problems = self._plan_of(accepted)
            if plan is None:
                self.reject(accepted, shown, problems)
                return
            with contextlib.suppress(FileExistsError):  # two hosts planned alike: one wins
                publish_plan(self.layout, accepted.name, plan)
        self.log.info(
            "prompts_accepted",
            file=shown,
            accepted_as=accepted.name,
            items=len(plan),
            images=sum(j.count * j.images for j in plan.jobs),
            first_index={f"{j.nation}/{j.category}": j.first for j in plan.jobs},
        )

    def _plan_of(self, accepted: Path) -> tuple[Plan | None, list[str]]:
        try:
            data = read_regular(accepted, self.exp.limits.max_bytes)
        except NotARegularFile as exc:
            return None, [f"$: {exc.strerror}"]
        parsed = parse(data, self.exp.limits)
        if parsed.problems:
            return None, self._maybe_unfinished(accepted, parsed.problems)
        sha = hashlib.sha256(data).hexdigest()
        plans = self.book.plans()
        same = next((p for p in plans if p.sha256 == sha), None)
        if same is not None:
            return None, [
                f"$: the very same file was accepted before as {same.source}: its images are "
                "planned or made already, so nothing new would be made; to make more images "
                "of these prompts, add jobs or raise their counts in a new file"
            ]
        use = index_use(self.layout, {(j.nation, j.category) for j in parsed.jobs}, plans)
        plan = expand(
            parsed,
            file_sha=sha,
            template=self.exp.template,
            negative_default=self.exp.negative_default,
            base_payload=self.exp.base_payload,
            source=accepted.name,
            taken={folder: u.highest for folder, u in use.items()},
        )
        problems = existing_spelling_problems(plan, self.layout.generations)
        problems += overlap_problems(plan, use)
        return (plan if not problems else None), problems

    def _maybe_unfinished(self, accepted: Path, problems: list[str]) -> list[str]:
        """A file cut short and changed moments ago was most likely still being written
        (copied over a slow share): say so."""
        cut = any(p.startswith(("$: not valid JSON", "$: the file is empty")) for p in problems)
        try:
            recent = self.now() - accepted.stat().st_mtime < RECENT_WRITE_S
        except OSError:
            recent = False
        if cut and recent:
            return [*problems, "$: still being written when it was read? drop it again"]
        return problems

    def reject(self, accepted: Path, name: str, problems: list[str]) -> None:
        """Move a prompts file to rejected/ beside `<stem>.error.json` with the problems."""
        target = move_unique(accepted, self.layout.rejected)
        if target is None:
            return  # another host rejected it first
        atomic_write_json(
            target.with_name(target.stem + ".error.json"), {"file": name, "problems": problems}
        )
        self.log.error("prompts_rejected", file=name, moved_to=str(target), errors=problems)
        self.on_event("prompts_rejected", {"file": name, "problems": problems})

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
                plan = self.book.get(entry.name)
                if plan is None:
                    continue
                self._plans[entry.name] = (sig, plan)
            out.append(Batch(entry.name, Path(entry.path), self._plans[entry.name][1]))
        return out

    def finish(self, batch: Batch, summary: BatchSummary) -> None:
        """Every item exists or failed: move the file to queue/done (one host wins)."""
        if move_unique(batch.path, self.layout.done) is None:
            return
        self._plans.pop(batch.name, None)
        self.log.info("batch_done", file=batch.name, **summary.fields())
        self.on_event("batch_done", {"file": batch.name, **summary.fields()})
