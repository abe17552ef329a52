"""The daemon's side jobs, one hook each (docs/architecture.md#wiring): the root's marker,
the pause gate, the listeners, metrics, the sleep guard, the host report with its host-id
check, the orphan sweep and the batch summaries. The engine guards each on its own."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from emif_daemon.engine.hooks import Hook
from emif_daemon.engine.outcomes import ItemOutcome
from emif_daemon.engine.stage import StageContext, StageResult
from emif_daemon.engine.usage import ResourceSample
from emif_daemon.events import EventSink
from emif_daemon.intake.completion import CompletionReporter
from emif_daemon.logs import get_logger
from emif_daemon.macos.power import SleepGuard
from emif_daemon.observe.metrics import MetricsWriter
from emif_daemon.share.control import PauseGate
from emif_daemon.share.host_reports import HostState, host_id_clash, write_host_report
from emif_daemon.share.layout import Layout
from emif_daemon.share.root_marker import read_marker, root_problem
from emif_daemon.share.sweep import clean_orphans, finish_sidecar

ORPHAN_MAX_AGE_S = 6 * 3600  # another machine's temp file this old is abandoned
ROOT_CHECK_S = 1.0


class RootWatch(Hook):
    """Claims only while the root's marker is there (looked at at most once a second): a
    share that dropped or was swapped is never mistaken for an empty tree. The hooks that
    write to the share ask it first."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.marker = read_marker(layout)
        self.log = get_logger()
        self._checked = -ROOT_CHECK_S
        self._problem: str | None = None

    def may_claim(self) -> bool:
        return self.ok()

    def ok(self) -> bool:
        now = time.monotonic()
        if now - self._checked < ROOT_CHECK_S:
            return self._problem is None
        self._checked = now
        problem = root_problem(self.layout, self.marker)
        if problem != self._problem:
            if problem is not None:
                self.log.error("share_unavailable", reason=problem)
            else:
                self.log.info("share_back", root=str(self.layout.root))
        self._problem = problem
        return problem is None


class Pause(Hook):
    """`emif pause`: no new items while the farm's (or this host's) marker is there."""

    def __init__(self, layout: Layout, host: str) -> None:
        self.gate = PauseGate(layout, host)

    def may_claim(self) -> bool:
        return self.gate()


class Listeners(Hook):
    """Events for the webhook, the banner and the gallery refresher."""

    def __init__(self, events: EventSink) -> None:
        self.events = events

    def on_event(self, event: str, data: Mapping[str, Any]) -> None:
        self.events(event, data)


class Metrics(Hook):
    """A CSV row per finished item (observe/metrics.py)."""

    def __init__(self, layout: Layout, host: str) -> None:
        self.writer = MetricsWriter(layout.metrics / host)

    def item_finished(
        self,
        stage: str,
        item: str,
        outcome: ItemOutcome,
        sample: ResourceSample,
        result: StageResult | None,
    ) -> None:
        server_seconds = (result.server_seconds if result else None) or 0.0
        self.writer.write(stage, item, str(outcome), sample, {"server_seconds": server_seconds})


class Awake(Hook):
    """Keeps the Mac from idle-sleeping while items are in hand (macos/power.py)."""

    def __init__(self, enabled: bool) -> None:
        self.guard = SleepGuard(enabled)

    def busy(self, busy: bool) -> None:
        self.guard.busy(busy)


class HostReport(Hook):
    """Our report, unless another machine's live daemon reports under our host id: then
    say so and stop (`clash`), rather than mix two Macs' work under one name."""

    def __init__(self, ctx: StageContext, root: RootWatch, live_s: float) -> None:
        self.ctx = ctx
        self.root = root
        self.live_s = live_s  # a report younger than this is a live daemon's
        self.clash: str | None = None
        self.on_clash: Callable[[], None] = lambda: None
        self.log = get_logger()

    def report(self, state: HostState) -> None:
        if self.clash is not None:
            return  # the report is the other machine's now; never overwrite it
        if not self.root.ok():
            return  # never write where the share should be mounted
        if not state.stopped:
            clash = host_id_clash(
                self.ctx.layout, self.ctx.identity, self.ctx.clock.now(), self.live_s
            )
            if clash is not None:
                self.clash = clash
                self.log.error("host_id_clash", reason=clash)
                self.on_clash()
                return
        write_host_report(self.ctx.layout, self.ctx.identity, state)


class Sweep(Hook):
    """Removes temp files of dead writers in `folders` (only those: after a broken claim,
    one folder, not the whole share), else wherever the daemon writes."""

    def __init__(self, ctx: StageContext, root: RootWatch) -> None:
        self.ctx = ctx
        self.root = root
        self.log = get_logger()

    def sweep(self, folders: Sequence[Path] | None = None) -> None:
        if not self.root.ok():
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


class Completion(Hook):
    """Looks for batches through every enabled stage now and then (intake/completion.py)."""

    def __init__(self, reporter: CompletionReporter, root: RootWatch) -> None:
        self.reporter = reporter
        self.root = root

    def chore(self) -> None:
        if self.root.ok():
            self.reporter.check()
