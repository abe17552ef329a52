"""The stage runner: discover → claim → run → commit, one worker thread per stage.

After rq's worker loop: signal handlers only set a flag, threads wait on events (never
sleep), one try/except/finally per item picks the log level by error class and always
commits or releases the claim. ``once=True`` drains everything discoverable, including
what the stages themselves produce, then returns.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from .claims import Claim, ClaimStore
from .errors import (
    ClaimLost,
    PermanentItemError,
    ServerUnavailable,
    Shutdown,
    StageUnavailable,
    TransientError,
)
from .failures import FailureLog
from .logs import get_logger
from .metrics import MetricsWriter, ResourceSample
from .retry import RetryPolicy
from .watch import ShareUnavailable

EXIT_OK = 0
EXIT_FAILED = 1


@dataclass(frozen=True)
class Item:
    """One unit of work; done when every output exists."""

    key: str
    outputs: tuple[Path, ...]
    source: Path | None = None
    data: Any = None
    batch: str | None = None

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs)


@dataclass
class Discovery:
    """What a stage found: items to try, and how many wait for something else."""

    items: list[Item] = field(default_factory=list)
    waiting: int = 0  # inputs not settled yet, or not ready for another reason


class Stage(Protocol):
    name: str
    priority: int  # a shared server serves the higher priority first (downstream stages)
    workers: int  # worker threads; >1 lets one item's own work hide behind another's request

    def unavailable(self) -> str | None: ...
    def discover(self) -> Discovery: ...
    def run(self, item: Item, work: Work) -> dict[str, Any]: ...
    def wait_available(self, stop: threading.Event) -> None: ...
    def close(self) -> None: ...


class StageBase:
    """Defaults for a Stage's optional parts: always available, nothing to wait for or close."""

    workers = 1

    def unavailable(self) -> str | None:
        return None

    def wait_available(self, stop: threading.Event) -> None:
        """Block until the stage can work again after ServerUnavailable (or `stop` is set)."""

    def close(self) -> None:
        """Release what the stage holds (a child process) at shutdown."""


class Work:
    """What a stage may do with the claim it runs under."""

    def __init__(self, store: ClaimStore, claim: Claim, stop: threading.Event) -> None:
        self._store = store
        self._claim = claim
        self._stop = stop

    def check(self) -> None:
        """Unwind at shutdown between steps; raises Shutdown or ClaimLost."""
        if self._stop.is_set() or self._claim.abandoned:
            raise Shutdown
        if self._claim.lost:
            raise ClaimLost(self._claim.item)

    def commit(self, publish: Callable[[], Any], **record: Any) -> None:
        """Publish the output and mark the claim done, or raise if the claim is not ours."""
        if not self._store.commit(self._claim, publish, **record):
            if self._claim.abandoned:
                raise Shutdown
            raise ClaimLost(self._claim.item)


@dataclass
class StageStats:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    busy: int = 0  # items in hand (a stage may have more than one worker)
    started: float = field(default_factory=time.monotonic)


class Engine:
    def __init__(
        self,
        *,
        stages: list[Stage],
        store: ClaimStore,
        failed_dir: Path,
        retry: RetryPolicy,
        rescan_s: float,
        heartbeat_s: float,
        once: bool = False,
        stop: threading.Event | None = None,
        metrics: MetricsWriter | None = None,
        may_claim: Callable[[], bool] = lambda: True,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        progress_s: float = 60.0,
        grace_s: float = 5.0,
        sweep: Callable[[], None] = lambda: None,
        sweep_s: float = 3600.0,
        settle_s: float = 2.0,
        report: Callable[[dict[str, Any]], None] = lambda _state: None,
        on_busy: Callable[[bool], None] = lambda _busy: None,
    ) -> None:
        self.stages = stages
        self.store = store
        self.retry = retry
        self.rescan_s = rescan_s
        self.heartbeat_s = heartbeat_s
        self.once = once
        self.stop = stop or threading.Event()
        self.metrics = metrics
        self.may_claim = may_claim
        self.on_event = on_event or (lambda _event, _data: None)
        self.progress_s = progress_s
        self.grace_s = grace_s
        self.sweep = sweep  # removes temp files of dead writers
        self.sweep_s = sweep_s
        self.settle_s = settle_s
        self.report = report  # publishes this host's state for `emif status`
        self.on_busy = on_busy  # keeps a Mac awake while items are in flight
        self.wake = {s.name: threading.Event() for s in stages}
        self.stats = {s.name: StageStats() for s in stages}
        self.unavailable: dict[str, str] = {}
        self.log = get_logger()
        self.failures = {s.name: FailureLog(failed_dir, s.name) for s in stages}
        self._cond = threading.Condition()
        self._activity = 0
        self._idle_at: dict[str, int] = {}
        self._drained = threading.Event()
        self._share_down = False
        self.stop_reason = ""
        self._scanned: set[str] = set()

    # -- the whole run ----------------------------------------------------------------
    def run(self) -> int:
        threads = [
            threading.Thread(target=self._worker, args=(s,), name=f"{s.name}-{n}", daemon=True)
            for s in self.stages
            for n in range(1, max(1, getattr(s, "workers", 1)) + 1)
        ]
        self._report()
        keeper = threading.Thread(target=self._keeper, name="heartbeat", daemon=True)
        keeper.start()
        for t in threads:
            t.start()
        try:
            while not self.stop.is_set() and any(t.is_alive() for t in threads):
                if self._drained.wait(0.2):
                    break
        finally:
            self._shutdown(threads)
        if not self.once:
            return EXIT_OK  # stopped on request: a clean exit (launchd must not restart it)
        # Failed items stay failed until `emif retry`, so earlier runs' failures count too.
        failed = any(log.keys() for log in self.failures.values())
        return EXIT_FAILED if failed or self.unavailable else EXIT_OK

    def request_stop(self) -> None:
        """Called from a signal handler: only sets flags."""
        self.stop.set()
        for wake in self.wake.values():
            wake.set()

    def _shutdown(self, threads: list[threading.Thread]) -> None:
        # Order matters: (1) stop claiming, (2) give workers a moment to finish the step in
        # hand, (3) abandon and release whatever is still held so another host can take it
        # at once — an abandoned claim can no longer publish — (4) close the stages (the
        # segment child process), (5) drop our clock probe.
        self.log.info("daemon_stopping", reason=self.stop_reason or "drained")
        self.request_stop()
        deadline = time.monotonic() + self.grace_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for claim in self.store.held():
            self.store.release(claim)
            self.log.info("claim_released", stage=claim.stage, item=claim.item)
        for stage in self.stages:
            stage.close()
        self.on_busy(False)
        self._report(stopped=True)
        self.store.close()

    # -- one worker per stage -------------------------------------------------------------
    def _worker(self, stage: Stage) -> None:
        with structlog.contextvars.bound_contextvars(stage=stage.name):
            wake = self.wake[stage.name]
            while not self.stop.is_set():
                wake.clear()  # before the round: an event during it wakes the next wait
                reason = stage.unavailable()
                if reason is not None:
                    self._mark_unavailable(stage, reason)
                    return
                with self._cond:
                    seen = self._activity
                try:
                    outcome = self._round(stage)
                except Exception as exc:
                    self.log.error("stage_error", error=repr(exc), traceback=traceback.format_exc())
                    outcome = "blocked"
                if outcome == "worked":
                    continue
                if self.once and outcome == "idle" and self._mark_idle(stage, seen):
                    return
                wake.wait(self._pause_for(outcome))

    def _pause_for(self, outcome: str) -> float:
        """How long a worker waits before its next round (a file event wakes it earlier)."""
        if outcome == "settling":  # a file still being written: look again soon
            return min(self.rescan_s, max(self.settle_s / 2, 0.1))
        if outcome == "idle" and self.once:
            return 0.2
        return self.rescan_s

    def _mark_unavailable(self, stage: Stage, reason: str) -> None:
        if stage.name not in self.unavailable:
            self.unavailable[stage.name] = reason
            self.log.error("stage_unavailable", reason=reason)
            self.on_event("stage_unavailable", {"stage": stage.name, "reason": reason})
            self._report()
        with self._cond:
            self._idle_at[stage.name] = -1  # never blocks draining
            self._check_drained()

    def _mark_idle(self, stage: Stage, seen: int) -> bool:
        with self._cond:
            self._idle_at[stage.name] = seen
            self._check_drained()
            return self._drained.is_set()

    def _check_drained(self) -> None:
        busy = any(st.busy for st in self.stats.values())
        if (
            not busy
            and len(self._idle_at) == len(self.stages)
            and all(v in (-1, self._activity) for v in self._idle_at.values())
        ):
            self._drained.set()
            for wake in self.wake.values():
                wake.set()

    def _finished_one(self, stage: Stage, *, counts: bool) -> None:
        # One lock for both, so no idle worker ever sees "nobody busy" before the activity
        # this item caused (its output may be another stage's input).
        with self._cond:
            if counts:
                self._activity += 1
            self.stats[stage.name].busy -= 1
        for wake in self.wake.values():  # downstream stages may have new inputs
            wake.set()

    def _round(self, stage: Stage) -> str:
        """One discovery and a pass over it: 'worked', 'blocked' (others hold items, or we
        are paused), 'idle'."""
        if not self.may_claim():
            return "blocked"
        try:
            started = time.monotonic()
            found = stage.discover()
            failed = self.failures[stage.name].keys()
            if stage.name not in self._scanned:
                self._scanned.add(stage.name)
                self.log.info(
                    "first_scan",
                    todo=len(found.items),
                    waiting=found.waiting,
                    failed=len(failed),
                    seconds=round(time.monotonic() - started, 3),
                )
        except (ShareUnavailable, OSError) as exc:
            if not self._share_down:
                self._share_down = True
                self.log.error("share_unavailable", error=str(exc))
            return "blocked"
        if self._share_down:
            self._share_down = False
            self.log.info("share_back")
        todo = [it for it in found.items if it.key not in failed]
        self.stats[stage.name].pending = len(todo)
        blocked = False
        for item in todo:
            if self.stop.is_set() or not self.may_claim():
                return "blocked"
            claim = self._claim(stage, item)
            if claim is None:
                blocked = blocked or not item.done()
                continue
            self._process(stage, item, claim)
            return "worked"
        if found.waiting:
            return "settling"
        return "blocked" if blocked else "idle"

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
        self._sweep()  # the dead owner may have left half-written temp files
        return self.store.try_claim(stage.name, item.key)

    # -- one item ---------------------------------------------------------------------------
    def _process(self, stage: Stage, item: Item, claim: Claim) -> None:
        stats = self.stats[stage.name]
        with self._cond:
            stats.busy += 1
        sample = ResourceSample.take()
        status = "failed"
        record: dict[str, Any] = {}
        with structlog.contextvars.bound_contextvars(item=item.key):
            try:
                status, record = self._attempts(stage, item, claim)
            finally:
                self.store.release(claim)  # a no-op once committed
                if self.metrics is not None and status in ("done", "failed"):
                    self.metrics.write(stage.name, item.key, status, sample, record)
                self._finished_one(stage, counts=status in ("done", "failed", "skipped_existing"))

    def _attempts(self, stage: Stage, item: Item, claim: Claim) -> tuple[str, dict[str, Any]]:
        stats = self.stats[stage.name]
        broken = self.store.broken_count(stage.name, item.key)
        self.log.info("item_claimed", attempt=broken + 1)
        if self.failures[stage.name].has(item.key):
            return "released", {}  # another host failed it a moment ago
        if item.done():
            self.store.commit(claim, lambda: None, skipped=True)
            with self._cond:
                stats.skipped += 1
            self.log.info("skipped_existing")
            return "skipped_existing", {}
        if broken >= self.retry.max_attempts:
            reason = f"its worker died {broken} times while holding it (claims broken)"
            return self._fail(stage, item, reason, broken), {}
        work = Work(self.store, claim, self.stop)
        attempt = broken
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                record = stage.run(item, work)
            except Shutdown:
                return "released", {}
            except ClaimLost:
                self.log.debug("claim_lost")
                return "released", {}
            except ServerUnavailable as exc:
                self.log.info("item_deferred", reason=str(exc))
                self.store.release(claim)
                stage.wait_available(self.stop)
                return "released", {}
            except StageUnavailable as exc:
                # The stage as a whole cannot work (its model failed to load): give the item
                # back; the worker sees stage.unavailable() and stops.
                self.log.error("item_deferred", reason=str(exc))
                return "released", {}
            except PermanentItemError as exc:
                return self._fail(stage, item, str(exc), attempt), {}
            except TransientError as exc:
                reason = str(exc)
            except Exception as exc:
                reason = f"unexpected {type(exc).__name__}: {exc}"
                self.log.error("item_error", error=reason, traceback=traceback.format_exc())
            else:
                seconds = round(time.monotonic() - started, 3)
                with self._cond:
                    stats.done += 1
                self.log.info("item_done", seconds=seconds, **record)
                self.on_event("item_done", {"stage": stage.name, "item": item.key, **record})
                return "done", {"seconds": seconds, **record}
            if attempt >= self.retry.max_attempts:
                return self._fail(stage, item, reason, attempt), {}
            delay = self.retry.delay(attempt)
            self.log.warning("item_retry", attempt=attempt, reason=reason, wait_s=round(delay, 2))
            if self.stop.wait(delay):
                return "released", {}

    def _fail(self, stage: Stage, item: Item, reason: str, attempts: int) -> str:
        record = {
            "stage": stage.name,
            "item": item.key,
            "reason": reason,
            "attempts": attempts,
            "host": self.store.host,
            "batch": item.batch,
            "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.failures[stage.name].record(item.key, record)
        with self._cond:
            self.stats[stage.name].failed += 1
        self.log.error("item_failed", reason=reason, attempts=attempts)
        self.on_event("item_failed", record)
        return "failed"

    def _report(self, stopped: bool = False) -> None:
        state = {
            "host": self.store.host,
            "stopped": stopped,
            "unavailable": dict(self.unavailable),
            "stages": {
                name: {"done": st.done, "failed": st.failed, "pending": st.pending, "busy": st.busy}
                for name, st in self.stats.items()
            },
        }
        try:
            self.report(state)
        except OSError as exc:
            self.log.warning("report_failed", error=str(exc))

    def _sweep(self) -> None:
        try:
            self.sweep()
        except OSError as exc:
            self.log.warning("sweep_failed", error=str(exc))

    # -- heartbeats and progress --------------------------------------------------------
    def _keeper(self) -> None:
        last_progress = last_sweep = time.monotonic()
        while not self.stop.wait(self.heartbeat_s):
            if time.monotonic() - last_sweep >= self.sweep_s:
                last_sweep = time.monotonic()
                self._sweep()
            for claim in self.store.held():
                if not self.store.heartbeat(claim) and not claim.abandoned:
                    self.log.warning("claim_lost", stage=claim.stage, item=claim.item)
            self._report()
            self.on_busy(any(st.busy for st in self.stats.values()))
            if time.monotonic() - last_progress >= self.progress_s:
                last_progress = time.monotonic()
                self._progress()

    def _progress(self) -> None:
        for name, st in self.stats.items():
            if not (st.busy or st.pending):
                continue
            minutes = max(1e-9, (time.monotonic() - st.started) / 60)
            rate = st.done / minutes
            eta = round(st.pending / rate * 60) if rate else None
            self.log.info(
                "progress",
                stage=name,
                done=st.done,
                failed=st.failed,
                pending=st.pending,
                per_minute=round(rate, 2),
                eta_s=eta,
            )
