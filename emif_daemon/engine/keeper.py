"""The keeper thread: heartbeats for every claim in hand, and the daemon's periodic chores.

Heartbeats come first in every tick and are kept apart from the chores: if a claim is not
refreshed within the lease, another host breaks it and redoes the work. Every job is
guarded, so nothing a chore raises can stop the heartbeats.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from emif_daemon.engine.hooks import Hooks
from emif_daemon.engine.outcomes import StageStats
from emif_daemon.logs import get_logger
from emif_daemon.share.claims import ClaimStore
from emif_daemon.share.host_reports import HostState


@dataclass(frozen=True)
class Timing:
    """The engine's intervals, in seconds."""

    rescan_s: float = 15.0
    settle_s: float = 2.0
    heartbeat_s: float = 15.0
    progress_s: float = 60.0
    sweep_s: float = 3600.0
    grace_s: float = 5.0  # at shutdown, how long workers get to finish the step in hand
    once_server_wait_s: float = 300.0  # --once gives up on a server down this long


class Keeper:
    """Started and joined by the engine; `stop` ends it within one wait."""

    def __init__(
        self,
        store: ClaimStore,
        hooks: Hooks,
        timing: Timing,
        stats: Mapping[str, StageStats],
        state: Callable[[], HostState],
    ) -> None:
        self.store = store
        self.hooks = hooks
        self.timing = timing
        self.stats = stats
        self.state = state
        self.log = get_logger()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        last_progress = last_sweep = time.monotonic()
        while not self._stop.wait(self.timing.heartbeat_s):
            self._guarded("heartbeat", self.heartbeat)
            now = time.monotonic()
            if now - last_sweep >= self.timing.sweep_s:
                last_sweep = now
                self._guarded("sweep", self.hooks.sweep)
            self._guarded("report", lambda: self.hooks.report(self.state()))
            self._guarded("busy", lambda: self.hooks.busy(self.busy()))
            self._guarded("chore", self.hooks.chore)
            if now - last_progress >= self.timing.progress_s:
                last_progress = now
                self._guarded("progress", self.progress)

    def _guarded(self, job: str, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception as exc:
            self.log.error(
                "keeper_error", job=job, error=repr(exc), traceback=traceback.format_exc()
            )

    def heartbeat(self) -> None:
        """Refresh every claim in hand; a claim that is no longer ours is logged. An I/O
        error (a share answers EIO now and then) is logged and tried again next tick: the
        lease leaves room for a few missed beats, never taken for a lost claim."""
        for claim in self.store.held():
            try:
                ours = self.store.heartbeat(claim)
            except OSError as exc:
                self.log.warning(
                    "heartbeat_failed", stage=claim.stage, item=claim.item, error=str(exc)
                )
                continue
            if not ours and not (claim.abandoned or claim.closed):
                self.log.warning("claim_lost", stage=claim.stage, item=claim.item)

    def busy(self) -> bool:
        return any(st.busy for st in self.stats.values())

    def progress(self) -> None:
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
