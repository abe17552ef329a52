"""The stage runner: maintain → discover → claim → run → commit, worker threads per stage.

After rq's worker loop: signal handlers only set a flag, threads wait on events (never
sleep), one try/except/finally per item picks the log level by error class and always
commits or releases the claim. ``once=True`` drains everything discoverable, including what
the stages themselves produce, then returns (docs/architecture.md#the-engine).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import structlog

from emif_daemon.engine.drain import DrainDetector
from emif_daemon.engine.hooks import Hook, Hooks
from emif_daemon.engine.keeper import Keeper, Timing
from emif_daemon.engine.outcomes import (
    ItemOutcome,
    ItemResult,
    RoundOutcome,
    RunOutcome,
    StageStats,
    Verdict,
    reason_for,
    share_full,
    unclaimable,
    verdict_for,
)
from emif_daemon.engine.server_wait import Patience
from emif_daemon.engine.stage import Discovery, Item, Stage, Work
from emif_daemon.engine.usage import ResourceSample
from emif_daemon.errors import ClaimLost, ShareUnavailable, Shutdown, TransientError
from emif_daemon.logs import Repeats, get_logger
from emif_daemon.retry import RetryPolicy
from emif_daemon.share.claims import Claim, ClaimStore
from emif_daemon.share.failure_records import FailureLog, FailureRecord
from emif_daemon.share.host_reports import HostState

__all__ = ["Engine", "RunOutcome", "Timing"]


class Engine:
    def __init__(
        self,
        stages: list[Stage],
        store: ClaimStore,
        failed_dir: Path,
        *,
        retry: RetryPolicy,
        timing: Timing,
        hooks: Sequence[Hook] = (),
        once: bool = False,
        stop: threading.Event | None = None,
    ) -> None:
        self.stages = stages
        self.store = store
        self.retry = retry
        self.timing = timing
        self.hooks = Hooks(hooks)
        self.once = once
        self.stop = stop or threading.Event()
        self.wake = {s.name: threading.Event() for s in stages}
        self.stats = {s.name: StageStats() for s in stages}
        self.failures = {s.name: FailureLog(failed_dir, s.name) for s in stages}
        self.unavailable: dict[str, str] = {}
        self.stop_reason = ""
        self.log = get_logger()
        self._drain = DrainDetector(s.name for s in stages)
        self._patience = Patience(self.stop, timing.once_server_wait_s if once else None)
        self._keeper = Keeper(store, self.hooks, timing, self.stats, self.state)
        self._count_lock = threading.Lock()
        self._share_down = False
        self._scanned: set[str] = set()
        self._say_once = Repeats(self.log).error

    # -- the whole run ----------------------------------------------------------------
    def run(self) -> RunOutcome:
        workers = [
            threading.Thread(target=self._worker, args=(s,), name=f"{s.name}-{n}", daemon=True)
            for s in self.stages
            for n in range(1, max(1, s.workers) + 1)
        ]
        self.hooks.report(self.state())
        self._keeper.start()
        for t in workers:
            t.start()
        try:
            while not self.stop.is_set() and any(t.is_alive() for t in workers):
                if self._drain.drained.wait(0.2):
                    break
        finally:
            self._shutdown(workers)
        if self._patience.gave_up.is_set():
            return RunOutcome.SERVER_GAVE_UP
        if not self.once:
            return RunOutcome.STOPPED  # on request: a clean exit (launchd must not restart it)
        # Failed items stay failed until `emif retry`, so earlier runs' failures count too.
        failed = {name: len(log.keys()) for name, log in self.failures.items() if log.keys()}
        if not (failed or self.unavailable):
            return RunOutcome.DRAINED
        self.log.error(
            "exit_with_problems",
            failed=failed,
            unavailable=self.unavailable,
            hint="`emif failures` lists failed items with their reasons, `emif retry` retries",
        )
        return RunOutcome.PROBLEMS

    def request_stop(self) -> None:
        """Called from a signal handler: only sets flags."""
        self.stop.set()
        for wake in self.wake.values():
            wake.set()

    def _shutdown(self, workers: list[threading.Thread]) -> None:
        # Order matters: (1) stop claiming, (2) give workers a moment to finish the step in
        # hand, (3) abandon and release whatever is still held so another host can take it
        # at once — an abandoned claim can no longer publish — (4) close the stages (the
        # segment child process), (5) stop the keeper (no more heartbeats: nothing is held),
        # (6) let the Mac sleep and say we stopped.
        self.log.info("daemon_stopping", reason=self.stop_reason or "drained")
        self.request_stop()
        deadline = time.monotonic() + self.timing.grace_s
        for t in workers:
            t.join(max(0.0, deadline - time.monotonic()))
        for claim in self.store.held():
            self.store.release(claim)
            self.log.info("claim_released", stage=claim.stage, item=claim.item)
        for stage in self.stages:
            try:
                stage.close()
            except Exception as exc:
                self.log.error("stage_close_failed", stage=stage.name, error=repr(exc))
        self._keeper.stop(max(1.0, deadline - time.monotonic()))
        for t in workers:  # a worker stuck in a request unwinds once its claim is released
            t.join(max(0.0, deadline - time.monotonic()))
        self.hooks.busy(False)
        self.hooks.report(self.state(stopped=True))

    def state(self, stopped: bool = False) -> HostState:
        return HostState(
            host=self.store.host,
            stopped=stopped,
            unavailable=dict(self.unavailable),
            stages={name: st.counts() for name, st in self.stats.items()},
        )

    # -- one worker ----------------------------------------------------------------------
    def _worker(self, stage: Stage) -> None:
        with structlog.contextvars.bound_contextvars(stage=stage.name):
            wake = self.wake[stage.name]
            while not self.stop.is_set():
                wake.clear()  # before the round: an event during it wakes the next wait
                reason = stage.unavailable()
                if reason is not None:
                    self._mark_unavailable(stage, reason)
                    return
                token = self._drain.round_started()
                try:
                    outcome = self._round(stage)
                except Exception as exc:
                    self.log.error("stage_error", error=repr(exc), traceback=traceback.format_exc())
                    outcome = RoundOutcome.BLOCKED
                finally:
                    self._drain.round_ended()
                if outcome is RoundOutcome.WORKED:
                    continue
                idle = outcome is RoundOutcome.IDLE
                if self.once and idle and self._drain.idle(stage.name, token):
                    for other in self.wake.values():  # the others need not wait their turn
                        other.set()
                    return
                wake.wait(self._pause_for(outcome))

    def _pause_for(self, outcome: RoundOutcome) -> float:
        """How long a worker waits before its next round (a file event wakes it earlier)."""
        if outcome is RoundOutcome.SETTLING:  # a file still being written: look again soon
            return min(self.timing.rescan_s, max(self.timing.settle_s / 2, 0.1))
        if outcome is RoundOutcome.IDLE and self.once:
            return 0.2
        return self.timing.rescan_s

    def _mark_unavailable(self, stage: Stage, reason: str) -> None:
        if stage.name not in self.unavailable:
            self.unavailable[stage.name] = reason
            self.log.error("stage_unavailable", reason=reason)
            self.hooks.on_event("stage_unavailable", {"stage": stage.name, "reason": reason})
            self.hooks.report(self.state())
        self._drain.retire(stage.name)

    def _maintain(self, stage: Stage) -> None:
        """The stage's own upkeep (intake of prompts files); its failures are its own."""
        try:
            stage.maintain()
        except Exception as exc:
            self.log.error("maintenance_failed", error=repr(exc), traceback=traceback.format_exc())

    def _discover(self, stage: Stage) -> Discovery | None:
        """What the stage can do now, or None while its folders cannot be read."""
        try:
            started = time.monotonic()
            found = stage.discover()
            if stage.name not in self._scanned:
                self._scanned.add(stage.name)
                self.log.info(
                    "first_scan",
                    todo=found.open_count(),
                    waiting=found.waiting,
                    failed=len(self.failures[stage.name].keys()),
                    seconds=round(time.monotonic() - started, 3),
                )
        except (ShareUnavailable, OSError) as exc:
            if share_full(exc):  # the probe of the server clock could not be written
                self._say_once("share_full", error=exc.strerror or str(exc))
                return None
            if not self._share_down:
                self._share_down = True
                self.log.error("share_unavailable", error=str(exc))
            return None
        if self._share_down:
            self._share_down = False
            self.log.info("share_back")
        return found

    def _round(self, stage: Stage) -> RoundOutcome:
        """One discovery and a pass over it."""
        if not self.hooks.may_claim():
            return RoundOutcome.BLOCKED
        self._maintain(stage)
        found = self._discover(stage)
        if found is None:
            return RoundOutcome.BLOCKED
        failed = self.failures[stage.name].keys()
        self.stats[stage.name].pending = found.open_count()
        blocked = False
        for item in found.items:
            if item.key in failed:
                continue
            if self.stop.is_set() or not self.hooks.may_claim():
                return RoundOutcome.BLOCKED
            try:
                claim = self._claim(stage, item)
            except OSError as exc:
                if unclaimable(exc):
                    with structlog.contextvars.bound_contextvars(item=item.key):
                        self._fail(stage, item, f"its claim cannot be made ({exc}); rename it", 0)
                    continue
                # Cannot write a claim (a full or read-only share): nothing was taken.
                event = "share_full" if share_full(exc) else "claim_failed"
                self._say_once(event, error=exc.strerror or str(exc))
                return RoundOutcome.BLOCKED
            if claim is None:
                blocked = blocked or not item.done()
                continue
            self._process(stage, item, claim)
            return RoundOutcome.WORKED
        if found.waiting:
            return RoundOutcome.SETTLING
        return RoundOutcome.BLOCKED if blocked else RoundOutcome.IDLE

    def _claim(self, stage: Stage, item: Item) -> Claim | None:
        if item.done():
            return None
        claim = self.store.try_claim(stage.name, item.key)
        if claim is not None:
            return claim
        broken = self.store.break_stale(stage.name, item.key)
        if broken is None:
            return None
        self.log.warning(
            "claim_broken",
            item=item.key,
            owner_host=broken.get("host"),
            owner_pid=broken.get("pid"),
        )
        # The dead owner may have left half-written temp files beside the outputs.
        self.hooks.sweep(sorted({path.parent for path in item.outputs}))
        return self.store.try_claim(stage.name, item.key)

    # -- one item ---------------------------------------------------------------------------
    def _process(self, stage: Stage, item: Item, claim: Claim) -> None:
        stats = self.stats[stage.name]
        with self._count_lock:
            stats.busy += 1
        self._drain.item_started(stage.name)
        sample = ResourceSample.take()
        result = ItemResult(ItemOutcome.RELEASED)
        with structlog.contextvars.bound_contextvars(item=item.key):
            try:
                result = self._attempts(stage, item, claim)
            finally:
                # Count the item as finished before anything else can fail: a worker that
                # never says so keeps --once running and the Mac awake for ever.
                self.store.release(claim)  # a no-op once committed
                with self._count_lock:
                    stats.busy -= 1
                self._drain.item_finished(finished=result.outcome.finished)
                for wake in self.wake.values():  # downstream stages may have new inputs
                    wake.set()
                if result.outcome.metered:
                    self.hooks.item_finished(
                        stage.name, item.key, result.outcome, sample, result.result
                    )

    def _attempts(self, stage: Stage, item: Item, claim: Claim) -> ItemResult:
        broken = self.store.broken_count(stage.name, item.key)
        self.log.info("item_claimed", attempt=broken + 1)
        if self.failures[stage.name].has(item.key):
            return ItemResult(ItemOutcome.RELEASED)  # another host failed it a moment ago
        if item.done():
            self.store.commit(claim, lambda: None, skipped=True)
            with self._count_lock:
                self.stats[stage.name].skipped += 1
            self.log.info("skipped_existing")
            return ItemResult(ItemOutcome.SKIPPED)
        if broken >= self.retry.max_attempts:
            reason = f"its worker died {broken} times while holding it (claims broken)"
            return self._fail(stage, item, reason, broken)
        work = Work(self.store, claim, self.stop)
        attempt = broken
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                done = stage.run(item, work)
            except (Exception, Shutdown) as exc:
                ended = self._after_error(stage, item, claim, exc, attempt)
                if ended is not None:
                    return ended
                reason = reason_for(exc)
            else:
                seconds = round(time.monotonic() - started, 3)
                with self._count_lock:
                    self.stats[stage.name].done += 1
                self.log.info("item_done", seconds=seconds, **done.fields())
                self.hooks.on_event(
                    "item_done", {"stage": stage.name, "item": item.key, **done.fields()}
                )
                return ItemResult(ItemOutcome.DONE, done, seconds)
            delay = self.retry.delay(attempt)
            self.log.warning("item_retry", attempt=attempt, reason=reason, wait_s=round(delay, 2))
            if self.stop.wait(delay):
                return ItemResult(ItemOutcome.RELEASED)

    def _after_error(
        self, stage: Stage, item: Item, claim: Claim, exc: Exception | Shutdown, attempt: int
    ) -> ItemResult | None:
        """What an error from `stage.run` ends in; None: try again after a backoff."""
        verdict = verdict_for(exc)
        if verdict is Verdict.GIVE_BACK:
            if isinstance(exc, ClaimLost):
                self.log.debug("claim_lost")
            return ItemResult(ItemOutcome.RELEASED)
        if verdict is Verdict.WAIT_FOR_SPACE:
            self._say_once("share_full", error=getattr(exc, "strerror", None) or str(exc))
            return ItemResult(ItemOutcome.RELEASED)
        if verdict is Verdict.WAIT_FOR_SERVER:
            self.log.info("item_deferred", reason=str(exc))
            self.store.release(claim)
            if not self._patience.wait(stage):
                self.log.error(
                    "server_wait_gave_up", waited_s=self.timing.once_server_wait_s, reason=str(exc)
                )
                self.request_stop()
            return ItemResult(ItemOutcome.RELEASED)
        if verdict is Verdict.STAGE_DOWN:
            # The stage as a whole cannot work (its model failed to load): give the item
            # back; the worker sees stage.unavailable() and stops.
            self.log.error("item_deferred", reason=str(exc))
            return ItemResult(ItemOutcome.RELEASED)
        reason = reason_for(exc)
        if verdict is Verdict.FAIL_NOW:
            return self._fail(stage, item, reason, attempt)
        if not isinstance(exc, TransientError):
            self.log.error("item_error", error=reason, traceback=traceback.format_exc())
        if attempt >= self.retry.max_attempts:
            return self._fail(stage, item, reason, attempt)
        return None

    def _fail(self, stage: Stage, item: Item, reason: str, attempts: int) -> ItemResult:
        record = FailureRecord.now(
            stage.name, item.key, reason, attempts, self.store.host, item.batch
        )
        try:
            self.failures[stage.name].record(record)
        except OSError as exc:
            # Without its record the item would be retried for ever by every host: give it
            # back and say why, loudly.
            self.log.error("failure_record_failed", reason=reason, error=str(exc))
            return ItemResult(ItemOutcome.RELEASED)
        with self._count_lock:
            self.stats[stage.name].failed += 1
        self.log.error("item_failed", reason=reason, attempts=attempts)
        self.hooks.on_event("item_failed", record.to_json())
        return ItemResult(ItemOutcome.FAILED)
