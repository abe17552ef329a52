"""The daemon's side jobs, as the engine sees them (one `EngineHooks` object): the pause
gate and the root's marker, listeners, metrics, the sleep guard, the host report with its
host-id check, and the orphan sweep (docs/architecture.md#wiring)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from emif_daemon.config.schema import Config
from emif_daemon.engine.hooks import EngineHooks
from emif_daemon.engine.outcomes import ItemOutcome
from emif_daemon.engine.stage import StageContext, StageResult
from emif_daemon.engine.usage import ResourceSample
from emif_daemon.events import EventSink
from emif_daemon.intake.completion import BatchSummaries
from emif_daemon.logs import get_logger
from emif_daemon.macos.power import SleepGuard
from emif_daemon.observe.metrics import MetricsWriter
from emif_daemon.share.control import PauseGate
from emif_daemon.share.host_reports import HostState, host_id_clash, write_host_report
from emif_daemon.share.root_marker import read_marker, root_problem
from emif_daemon.share.sweep import clean_orphans, finish_sidecar

ORPHAN_MAX_AGE_S = 6 * 3600  # another machine's temp file this old is abandoned
ROOT_CHECK_S = 1.0


class DaemonHooks(EngineHooks):
    """The daemon's side jobs, as the engine sees them."""

    def __init__(self, cfg: Config, ctx: StageContext, events: EventSink) -> None:
        self.ctx = ctx
        self.events = events
        self.gate = PauseGate(ctx.layout, ctx.host)
        self.metrics = MetricsWriter(ctx.layout.metrics / ctx.host)
        self.guard = SleepGuard(cfg.macos.prevent_sleep)
        self.log = get_logger()
        # A report younger than this is a live daemon's (it reports every heartbeat).
        self.live_s = max(cfg.coordination.lease_s, 3 * cfg.coordination.heartbeat_s)
        self.clash: str | None = None
        self.on_clash: Callable[[], None] = lambda: None
        self.marker = read_marker(ctx.layout)
        self.summaries: BatchSummaries | None = None  # set by the wiring
        self._root_checked = -ROOT_CHECK_S
        self._root_problem: str | None = None

    def may_claim(self) -> bool:
        return self.root_ok() and self.gate()

    def root_ok(self) -> bool:
        """The root's marker is still there (checked at most once a second): a share that
        dropped or was swapped is never mistaken for an empty tree."""
        now = time.monotonic()
        if now - self._root_checked < ROOT_CHECK_S:
            return self._root_problem is None
        self._root_checked = now
        problem = root_problem(self.ctx.layout, self.marker)
        if problem != self._root_problem:
            if problem is not None:
                self.log.error("share_unavailable", reason=problem)
            else:
                self.log.info("share_back", root=str(self.ctx.layout.root))
        self._root_problem = problem
        return problem is None

    def on_event(self, event: str, data: Mapping[str, Any]) -> None:
        self.events(event, data)

    def item_finished(
        self,
        stage: str,
        item: str,
        outcome: ItemOutcome,
        sample: ResourceSample,
        result: StageResult | None,
    ) -> None:
        server_seconds = (result.server_seconds if result else None) or 0.0
        self.metrics.write(stage, item, str(outcome), sample, {"server_seconds": server_seconds})

    def busy(self, busy: bool) -> None:
        self.guard.busy(busy)

    def report(self, state: HostState) -> None:
        """Our report, unless another machine's live daemon reports under our host id:
        then say so and stop (`clash`), rather than mix two Macs' work under one name."""
        if self.clash is not None:
            return  # the report is the other machine's now; never overwrite it
        if not self.root_ok():
            return  # never write where the share should be mounted
        if not state.stopped:
            clash = host_id_clash(
                self.ctx.layout, self.ctx.identity, self.ctx.clock.now(), self.live_s
            )
            if clash is not None:
                if self.clash is None:
                    self.clash = clash
                    self.log.error("host_id_clash", reason=clash)
                    self.on_clash()
                return
        write_host_report(self.ctx.layout, self.ctx.identity, state)

    def chore(self) -> None:
        if self.summaries is not None and self.root_ok():
            self.summaries.check()

    def sweep(self, folders: Sequence[Path] | None = None) -> None:
        """Remove temp files of dead writers in `folders` (only those: after a broken
        claim, one folder, not the whole share), else wherever the daemon writes."""
        if not self.root_ok():
            return
        layout = self.ctx.layout
        removed = clean_orphans(
            list(folders) if folders is not None else [layout.root],
            machine=self.ctx.identity.machine,
            server_now=self.ctx.clock.now(),
            max_age_s=ORPHAN_MAX_AGE_S,
            alive=psutil.pid_exists,
            descend=layout.may_hold_temp_files if folders is None else lambda _p: False,
            finish=finish_sidecar,
        )
        for path in removed:
            self.log.info("orphan_removed", path=str(path))
