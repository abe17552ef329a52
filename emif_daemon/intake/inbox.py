"""The intake: queue/ → accepted/ (or rejected/) → done/ (docs/architecture.md#the-data-path).

A file is accepted by renaming it from ``queue/`` into ``queue/accepted/``: one host wins.
Its plan is then made under the share's intake lock, its indices continuing after every
index planned or present for each nation/category (allocation.py), and published in
``.emif/jobs/``: from then on the names are fixed, and every host reads the same plan. A
file named like a finished batch with failed items is that batch's correction
(batches.py). A batch whose every item is made or failed moves on to ``queue/done/``.
`Inbox.step` does all of it once; the generate stage runs it before each round.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emif_daemon.errors import NotARegularFile
from emif_daemon.events import EventSink
from emif_daemon.intake.allocation import intake_lock
from emif_daemon.intake.batches import FixResult, failed_items, fix_batch
from emif_daemon.intake.open_items import Batch, OpenItems
from emif_daemon.intake.planning import Expansion, plan_file
from emif_daemon.intake.plans import Plan, PlanBook, has_plan, publish_plan
from emif_daemon.intake.queue_files import (
    is_prompts_name,
    move_unique,
    queued_files,
    stray_files,
    undo_stranded_moves,
)
from emif_daemon.logs import get_logger
from emif_daemon.share.atomic import (
    atomic_write_json,
    read_regular,
)
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import Layout
from emif_daemon.share.watch import Settler


@dataclass(frozen=True)
class BatchDone:
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
        *,
        settler: Settler | None = None,
        relist_s: float = 0.0,
    ) -> None:
        self.settler = settler or Settler(0.0)
        self.open = OpenItems(layout, relist_s)
        self._strays: set[str] = set()
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

    @classmethod
    def on_share(
        cls,
        layout: Layout,
        exp: Expansion,
        on_event: EventSink,
        *,
        clock: ServerClock,
        identity: HostIdentity,
        settler: Settler,
        relist_s: float,
    ) -> Inbox:
        """The daemon's inbox: planning under the share's intake lock, ages by the file
        server's clock."""
        return cls(
            layout,
            exp,
            on_event,
            lock=lambda: intake_lock(layout, clock, identity),
            now=clock.now,
            settler=settler,
            relist_s=relist_s,
        )

    # -- one round of upkeep ----------------------------------------------------------------
    def step(self) -> None:
        """Accept or reject settled queue files, plan those waiting, put back stranded moves,
        and finish batches with nothing left to make."""
        queued = queued_files(self.layout)
        if queued:
            now = self.now()
            for path in queued:
                if self.settler.ready(path, now):
                    self._take_or_fix(path)
        self.plan_waiting()
        for path in undo_stranded_moves((self.layout.queue, self.layout.accepted), self.now()):
            self.log.warning("prompts_move_undone", file=str(path))
        self._say_strays()
        for batch in self.batches():
            if next(self.open.of(batch), None) is None:
                self._finish(batch)

    def waiting(self) -> int:
        """Queue files not settled yet, and files we accepted but could not plan yet: work
        that is coming, so a round that saw none of their items is not idle."""
        queued = queued_files(self.layout)
        now = self.now() if queued else 0.0
        return sum(1 for p in queued if not self.settler.ready(p, now)) + self.unplanned()

    def _say_strays(self) -> None:
        """Each file in queue/ that is not a prompts file, said once."""
        for name in stray_files(self.layout):
            if name not in self._strays:
                self._strays.add(name)
                self.log.warning(
                    "queue_file_ignored",
                    file=name,
                    hint="only *.json files are prompts files; rename it if it is one",
                )

    def _take_or_fix(self, path: Path) -> None:
        try:
            if not self._fix(path):
                self.take(path)
        except OSError as exc:  # the next round tries again; other files go on
            self.log.error("prompts_intake_failed", file=path.name, error=str(exc))

    def _fix(self, path: Path) -> bool:
        """A file named like a finished batch with failed items is its correction: its
        failed items are made again with the new plan (batches.py). True if it was one."""
        layout = self.layout
        if not (layout.done / path.name).is_file() or not failed_items(layout, path.name):
            return False
        try:
            data = read_regular(path, self.exp.limits.max_bytes)
        except NotARegularFile:
            return False  # refused with its reason by the normal intake
        if data == (layout.done / path.name).read_bytes():
            return False  # the same file again: said so by the normal intake
        with self.lock() as held:
            if not held:
                return True  # next round
            result = fix_batch(layout, self.exp, path.name, data)
        if isinstance(result, FixResult):
            path.unlink(missing_ok=True)
            self.log.info("batch_fixed", file=path.name, pending_again=result.pending_again)
            return True
        # Named like the batch, so meant to fix it: refused with the reasons, not taken as
        # a new batch of other images.
        self.reject(path, path.name, result)
        return True

    def _finish(self, batch: Batch) -> None:
        unmade = self.open.unmade(batch)
        done = BatchDone(
            items=len(batch.plan),
            done=len(batch.plan) - len(unmade),
            failed=len(unmade),
            failures=[{"item": i.key, "reason": self._reason(i.key)} for i in unmade],
        )
        try:
            self.finish(batch, done)
        except OSError as exc:
            self.log.error("batch_finish_failed", file=batch.name, error=str(exc))

    def _reason(self, key: str) -> str | None:
        record = self.open.failures.read(key)
        return record.reason if record else None

    # -- the steps -----------------------------------------------------------------------
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
            plan, problems = plan_file(
                self.layout, self.exp, accepted, self.book.plans(), self.now()
            )
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

    def finish(self, batch: Batch, summary: BatchDone) -> None:
        """Every item exists or failed: move the file to queue/done (one host wins)."""
        if move_unique(batch.path, self.layout.done) is None:
            return
        self._plans.pop(batch.name, None)
        self.open.forget(batch.name)
        self.log.info("batch_done", file=batch.name, **summary.fields())
        self.on_event("batch_done", {"file": batch.name, **summary.fields()})
