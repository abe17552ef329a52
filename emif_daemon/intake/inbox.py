"""The intake: queue/ → accepted/ (or rejected/) → done/ (docs/architecture.md#the-data-path).

A file is accepted by renaming it from ``queue/`` into ``queue/accepted/``: one host wins.
Under the share's intake lock its plan is then made (planning.py): its indices reserved on
the file server (allocation.py), the plan published in ``.emif/jobs/`` by a no-replace rename
under a path that names that batch alone. From then on the names are fixed, and every host
reads the same plan. A file named like a finished batch with failed items is that batch's
correction (batches.py). A batch whose every item is made or failed moves on to
``queue/done/``. Every step can be cut short by a kill and is completed by the next round of
any host: a half-done move is put back (queue_files.py), an accepted file without a plan is
planned, a fix written down is finished, a damaged plan is restored from its copy.
`Inbox.step` does all of it once; the generate stage runs it before each round.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emif_daemon.errors import NotARegularFile
from emif_daemon.events import EventSink
from emif_daemon.intake.allocation import Reservations, beat_of, intake_lock
from emif_daemon.intake.batches import (
    failed_items,
    finish_fix,
    journal_path,
    pending_fixes,
    propose_fix,
    start_fix,
)
from emif_daemon.intake.finishing import finish_batch, record_foreign
from emif_daemon.intake.open_items import Batch, OpenItems
from emif_daemon.intake.planning import Expansion, plan_file
from emif_daemon.intake.plans import (
    Damaged,
    Plan,
    PlanBook,
    plan_path,
    publish_plan,
    same_name,
)
from emif_daemon.intake.queue_files import (
    is_prompts_name,
    move_unique,
    queued_files,
    rename_within,
    stray_files,
    undo_stranded_moves,
)
from emif_daemon.logs import get_logger
from emif_daemon.share.atomic import atomic_write_json, read_regular, rename_noreplace
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import Layout
from emif_daemon.share.watch import Settler


def _unlocked() -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext(True)


class Inbox:
    """queue/ → accepted/ (or rejected/) → done/, with each accepted file's plan.

    `lock` serialises planning, fixing and finishing across hosts (allocation.intake_lock);
    `now` is the file server's clock.
    """

    def __init__(
        self,
        layout: Layout,
        exp: Expansion,
        on_event: EventSink,
        lock: Callable[[], contextlib.AbstractContextManager[Any]] = _unlocked,
        now: Callable[[], float] = time.time,
        *,
        settler: Settler | None = None,
        relist_s: float = 0.0,
        identity: HostIdentity | None = None,
    ) -> None:
        self.settler = settler or Settler(0.0)
        self.open = OpenItems(layout, relist_s, now)
        self.layout = layout
        self.exp = exp
        self.on_event = on_event
        self.lock = lock
        self.now = now
        self.me = identity or HostIdentity.current()
        self.log = get_logger()
        self.book = PlanBook(layout)
        self._plans: dict[str, tuple[tuple[int, int], Plan]] = {}  # by accepted file's stat
        self._accepting: dict[str, str] = {}  # accepted by us, not planned yet → queue name
        self._said: set[str] = set()  # strays and damaged plans, each said once
        self._repairing = threading.Lock()
        self._in_hand = 0  # moves other hosts have in hand, unplanned files, fixes: coming

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
            identity=identity,
        )

    # -- one round of upkeep ----------------------------------------------------------------
    def step(self) -> None:
        """Put back half-done moves, accept or reject settled queue files, complete what a
        killed host left (plans, fixes), and finish batches with nothing left to make."""
        restored, moving = undo_stranded_moves(self.layout, self.now(), self.me)
        for path in restored:
            self.log.warning("prompts_move_undone", file=str(path))
        left = self.complete_steps()  # first: a fix cut short owns its corrected queue file
        queued = queued_files(self.layout)
        if queued:
            now = self.now()
            for path in queued:
                if self.settler.ready(path, now):
                    self._take_or_fix(path)
        self._say_strays()
        for batch in self.batches():
            if self.open.finished(batch) and self.open.prove(batch):
                self._record_foreign()
                self._finish(batch)
        self._in_hand = moving + left

    def waiting(self) -> int:
        """Work that is coming: queue files not settled yet, moves in another host's hand,
        accepted files without a plan, fixes not finished, images not proven the batch's
        own yet. A round that saw none of their items is not idle, so --once waits."""
        queued = queued_files(self.layout)
        now = self.now() if queued else 0.0
        unsettled = sum(1 for p in queued if not self.settler.ready(p, now))
        unsure = sum(len(keys) for keys in self.open.unsure.values())
        return unsettled + self._in_hand + self.unplanned() + unsure

    def complete_steps(self) -> int:
        """Under the intake lock: finish fixes written down and plan accepted files without a
        plan. Returns how many are left for a later round (the lock was busy)."""
        fixes = pending_fixes(self.layout)
        unplanned = self._unplanned()
        if not fixes and not unplanned:
            return 0
        with self.lock() as held:
            if not held:
                return len(fixes) + len(unplanned)
            for journal in fixes:
                self._finish_fix(journal)
            for path in unplanned:
                self._plan(path, held)
        for damaged in self.book.damaged():  # plans of finished batches too, seen planning
            damaged.repair(self._said)
        return 0

    def _finish_fix(self, journal: Path) -> None:
        try:
            result = finish_fix(self.layout, journal)
        except ValueError as exc:  # damaged: set aside, said once; nothing was changed
            with contextlib.suppress(OSError):
                rename_noreplace(journal, journal.with_name(journal.name + ".damaged"))
            self.log.error("fix_journal_damaged", journal=str(journal), error=str(exc))
            return
        self.log.info("batch_fixed", file=result.batch, pending_again=result.pending_again)

    def plan_waiting(self) -> None:
        """Plan the accepted files still without one (ours that waited for the lock, and
        those of an acceptor that died before planning)."""
        self.complete_steps()

    def _unplanned(self) -> list[Path]:
        try:
            entries = list(os.scandir(self.layout.accepted))
        except FileNotFoundError:
            return []
        return [
            Path(e.path)
            for e in entries
            if is_prompts_name(e.name)
            and e.name not in self._plans  # planned: known from batches()
            and self.book.state(e.name) is None
        ]

    def unplanned(self) -> int:
        """Accepted files without a plan yet (the intake lock was busy, or their acceptor
        died before planning them)."""
        return len(self._unplanned())

    def _say_strays(self) -> None:
        """Each file in queue/ that is not a prompts file, said once."""
        for name in stray_files(self.layout):
            if name not in self._said:
                self._said.add(name)
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
        if journal_path(layout, path.name).exists():
            return True  # a fix under way owns it: it is removed when the fix is done
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
            fix = propose_fix(layout, self.exp, path.name, data)
            if isinstance(fix, list):
                # Named like the batch, so meant to fix it: refused with the reasons, not
                # taken as a new batch of other images.
                self.reject(path, path.name, fix)
                return True
            result = start_fix(layout, fix, queued=path)
        self.log.info("batch_fixed", file=path.name, pending_again=result.pending_again)
        return True

    # -- the steps -----------------------------------------------------------------------
    def take(self, path: Path) -> None:
        """Accept or reject one settled queue file; losing the race to another host is fine.

        The file is renamed into accepted/ first (one host wins), and the plan is read from
        the renamed file: a file replaced in queue/ meanwhile is planned from what was
        accepted, never from what was there before.
        """
        layout = self.layout
        target = move_unique(
            path,
            layout.accepted,
            avoid=(layout.done, layout.cancelled),
            taken=lambda name: plan_path(layout, name).exists(),  # an earlier batch's name
        )
        if target is None:
            return
        self._accepting[target.name] = path.name
        with self.lock() as held:
            if held:
                self._plan(target, held)

    def _plan(self, accepted: Path, held: object) -> None:
        """Plan (or reject) an accepted file; the caller holds the intake lock."""
        name = accepted.name
        if self.book.state(name) is not None:
            self._accepting.pop(name, None)
            return  # planned (by another host, maybe), or a damaged plan: batches() says so
        if plan_path(self.layout, name).exists():
            self._rename(accepted)  # another batch's plan is at this name's path
            return
        shown = self._accepting.pop(name, name)
        reservations = Reservations(self.layout, beat_of(held))
        try:
            plan, problems = plan_file(
                self.layout, self.exp, accepted, self.book.plans(), self.now(), reservations
            )
            if plan is None:
                reservations.release()
                self.reject(accepted, shown, problems)
                return
            publish_plan(self.layout, name, plan)
        except FileExistsError:
            reservations.release()  # planned meanwhile: by another host, or another batch
            if self.book.state(name) is None:
                self._rename(accepted)
            return
        except BaseException:
            reservations.release()
            raise
        reservations.keep()
        self.log.info(
            "prompts_accepted",
            file=shown,
            accepted_as=name,
            items=len(plan),
            images=sum(j.count * j.images for j in plan.jobs),
            first_index={f"{j.nation}/{j.category}": j.first for j in plan.jobs},
            taken_meanwhile=reservations.refused,  # indices the listings missed: refused
        )

    def _rename(self, accepted: Path) -> None:
        """Another batch's plan holds this file's plan path (a name that differs from it only
        in case, or that a cancelled or finished batch had): the file gets a name of its
        own, planned next round."""
        layout = self.layout
        target = rename_within(
            accepted, lambda n: plan_path(layout, n).exists() or (layout.done / n).exists()
        )
        if target is not None:
            self._accepting[target.name] = self._accepting.pop(accepted.name, accepted.name)
            self.log.warning(
                "prompts_renamed",
                file=accepted.name,
                accepted_as=target.name,
                reason="a batch of a name a Mac takes for this one exists already",
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
        """Every accepted file with its plan (cached per file size and mtime). A damaged plan
        is restored from its copy, or said once and its batch left alone."""
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
                plan = self._plan_of(entry.name)
                if plan is None:
                    continue
                self._plans[entry.name] = (sig, plan)
            out.append(Batch(entry.name, Path(entry.path), self._plans[entry.name][1]))
        return out

    def _plan_of(self, name: str) -> Plan | None:
        state = self.book.state(name)
        if isinstance(state, Damaged):
            with self._repairing:  # the stage's workers: one restores, the other reads it
                state = self.book.state(name)
                if isinstance(state, Damaged):
                    state = state.repair(self._said)
        return state if state is not None and same_name(state.source, name) else None

    def _record_foreign(self) -> None:
        """Items whose name holds another file's image: failed, with the reason."""
        for record in record_foreign(self.open, self.me.host, self.log):
            self.on_event("item_failed", record.to_json())

    def _finish(self, batch: Batch) -> None:
        """Every item exists or failed: move the file to queue/done (one host wins), under
        the intake lock, so a fix of the batch is never half seen."""
        try:
            with self.lock() as held:
                done = finish_batch(self.layout, self.open, batch) if held else None
        except OSError as exc:
            self.log.error("batch_finish_failed", file=batch.name, error=str(exc))
            return
        if done is None:
            return
        self._plans.pop(batch.name, None)
        self.open.forget(batch.name)
        self.log.info("batch_done", file=batch.name, **done.fields())
        self.on_event("batch_done", {"file": batch.name, **done.fields()})
