"""Wires config, layout, claims, stages and the engine into one running daemon.

The only module that knows every part: stages get a frozen `StageContext` and their own
config section, the engine gets its hooks as one object (docs/architecture.md#wiring).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import psutil

from . import __version__
from .claims import ClaimStore
from .clock import ServerClock
from .config import Config
from .control import PauseGate
from .engine import Engine, Timing
from .errors import ServerUnavailable
from .files import clean_orphans
from .hooks import EngineHooks, HostState
from .hosts import host_id_clash, write_host_report
from .identity import HostIdentity, short_hostname
from .layout import STAGE_FOLDERS, STAGES, Layout
from .logs import get_logger
from .metrics import MetricsWriter, ResourceSample
from .notify import Notifier
from .outcomes import ItemOutcome
from .power import SleepGuard
from .progress import TerminalProgress
from .retry import RetryPolicy
from .sdapi import Server
from .stage import EventSink, Stage, StageContext, StageResult
from .watch import Hints, Settler

if TYPE_CHECKING:
    from .gallery_refresh import GalleryRefresher
    from .stages.segment import SegmentStage

ORPHAN_MAX_AGE_S = 6 * 3600
EXIT_USAGE = 2
NO_STAGES_HINT = (
    "every requested stage is disabled: set generate/upscale/segment.enabled in the "
    "config, or name enabled ones in --stages"
)


def host_id(cfg: Config) -> str:
    return cfg.coordination.host_id or short_hostname()


class ServerPool:
    """One `Server` per URL and daemon, so stages that share a server share its request
    limit and its outage log."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg.server
        self._servers: dict[str, Server] = {}
        self._lock = threading.Lock()
        self._probes: list[threading.Thread] = []

    def get(self, url: str) -> Server:
        with self._lock:
            if url not in self._servers:
                self._servers[url] = Server(
                    url,
                    connect_timeout=self._cfg.connect_timeout_s,
                    read_timeout=self._cfg.read_timeout_s,
                    slots=self._cfg.max_concurrent,
                    auth=self._cfg.auth,
                )
            return self._servers[url]

    def probe_in_background(self) -> None:
        """Ask each server what it is once at start-up, so a user who has not turned on the
        API server reads `server_unreachable` at once, not when the first file arrives."""

        def probe(server: Server) -> None:
            with contextlib.suppress(ServerUnavailable):
                server.probe()

        for server in list(self._servers.values()):
            thread = threading.Thread(target=probe, args=(server,), name="probe", daemon=True)
            thread.start()
            self._probes.append(thread)

    def join_probes(self, timeout: float) -> None:
        """At shutdown: a probe is one short GET; a server that hangs is not waited for."""
        deadline = time.monotonic() + timeout
        for thread in self._probes:
            thread.join(max(0.0, deadline - time.monotonic()))


@dataclass(frozen=True)
class StageKit:
    """What building the stages takes: their context, the config, the servers."""

    ctx: StageContext
    cfg: Config
    servers: ServerPool


StageFactory = Callable[[StageKit], list[Stage]]


def make_context(cfg: Config, events: EventSink) -> StageContext:
    layout = Layout(cfg.paths.root)
    layout.ensure()
    identity = HostIdentity.current(cfg.coordination.host_id)
    clock = ServerClock(layout.clock, f"{identity.host}.{identity.machine}.{identity.pid}")
    return StageContext(layout, identity, clock, Settler(cfg.watch.settle_s), events)


def make_kit(cfg: Config, events: EventSink | None = None) -> StageKit:
    return StageKit(make_context(cfg, events or _no_listener), cfg, ServerPool(cfg))


def claim_store(cfg: Config, ctx: StageContext) -> ClaimStore:
    return ClaimStore(
        ctx.layout.claims,
        ctx.layout.broken,
        ctx.clock,
        identity=ctx.identity,
        lease_s=cfg.coordination.lease_s,
    )


def build_stages(kit: StageKit, names: list[str], segment_builder: str = "") -> list[Stage]:
    """The stages among `names`, downstream last; each gets its own section and server."""
    from .stages.generate import GenerateStage  # noqa: PLC0415 - HTTP and image code
    from .stages.upscale import UpscaleStage  # noqa: PLC0415

    cfg, ctx = kit.cfg, kit.ctx
    stages: list[Stage] = []
    folders = cfg.server.models_folders  # where Draw Things' files are, when it runs here
    for name in names:
        if name == "generate":
            server = kit.servers.get(cfg.server.url)
            stages.append(GenerateStage(ctx, cfg.generate, server, folders))
        elif name == "upscale":
            server = kit.servers.get(cfg.upscale_url)
            stages.append(UpscaleStage(ctx, cfg.upscale, server, folders))
        elif name == "segment":
            stages.append(_segment_stage(ctx, cfg, segment_builder))
        else:
            raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    return stages


def _segment_stage(ctx: StageContext, cfg: Config, builder: str) -> SegmentStage:
    from .stages.segment import SegmentStage  # noqa: PLC0415 - multiprocessing, model spec

    return SegmentStage(ctx, cfg.segment, builder=builder)


def enabled_stages(cfg: Config, requested: list[str] | None) -> list[str]:
    wanted = requested or list(STAGES)
    return [s for s in STAGES if s in wanted and getattr(cfg, s).enabled]


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

    def may_claim(self) -> bool:
        return self.gate()

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

    def sweep(self) -> None:
        """Remove temp files of dead writers wherever the daemon writes, logging each."""
        layout = self.ctx.layout
        removed = clean_orphans(
            [layout.root],
            machine=self.ctx.identity.machine,
            server_now=self.ctx.clock.now(),
            max_age_s=ORPHAN_MAX_AGE_S,
            alive=psutil.pid_exists,
            descend=layout.may_hold_temp_files,
        )
        for path in removed:
            self.log.info("orphan_removed", path=str(path))


def make_engine(
    cfg: Config, kit: StageKit, stages: list[Stage], hooks: EngineHooks, *, once: bool
) -> Engine:
    return Engine(
        stages,
        claim_store(cfg, kit.ctx),
        kit.ctx.layout.failed,
        retry=RetryPolicy(
            max_attempts=cfg.server.max_attempts,
            base_s=cfg.server.backoff_s,
            cap_s=max(60.0, cfg.server.backoff_s),
        ),
        timing=Timing(
            rescan_s=cfg.watch.rescan_interval_s,
            settle_s=cfg.watch.settle_s,
            heartbeat_s=cfg.coordination.heartbeat_s,
            progress_s=cfg.logging.progress_s,
        ),
        hooks=hooks,
        once=once,
    )


def run_daemon(
    cfg: Config,
    *,
    once: bool = False,
    stage_names: list[str] | None = None,
    stage_factory: StageFactory | None = None,
    config_path: str = "",
    bars: bool = False,
) -> int:
    """Run until SIGTERM/SIGINT (or, with `once`, until drained); returns the exit code."""
    log = get_logger()
    notifier = _notifier(cfg)
    listeners: list[EventSink] = [notifier] if notifier is not None else []
    events = _fan_out(listeners)
    kit = make_kit(cfg, events)
    stages = (
        stage_factory(kit) if stage_factory else build_stages(kit, enabled_stages(cfg, stage_names))
    )
    if not stages:
        log.error("no_stages", hint=NO_STAGES_HINT)
        return EXIT_USAGE
    hooks = DaemonHooks(cfg, kit.ctx, events)
    # A share that is full or away cannot tell us now; the keeper checks again each tick.
    now = kit.ctx.clock.now_or_local()
    clash = host_id_clash(kit.ctx.layout, kit.ctx.identity, now, hooks.live_s)
    if clash is not None:
        log.error("host_id_clash", reason=clash)
        return EXIT_USAGE
    with contextlib.suppress(OSError):
        hooks.sweep()
    engine = make_engine(cfg, kit, stages, hooks, once=once)
    hooks.on_clash = engine.request_stop
    hints = _hints(cfg, kit.ctx, engine)
    previous = _install_signals(engine)
    log.info(
        "daemon_started",
        version=__version__,
        config=config_path,
        root=str(kit.ctx.layout.root),
        stages=[s.name for s in stages],
        once=once,
        pid=os.getpid(),
    )
    kit.servers.probe_in_background()
    progress = TerminalProgress(lambda: engine.stats) if bars else None
    if progress is not None:
        progress.start()
    gallery = _gallery(cfg, kit.ctx)
    if gallery is not None:
        listeners.append(gallery)
        gallery.start()
    try:
        code = engine.run()
    finally:
        # After the engine: bars drawn last, the gallery's last build (it needs the clock),
        # queued notifications flushed, watchers stopped, our clock probe removed, the
        # signal handlers given back.
        if progress is not None:
            progress.stop()
        if gallery is not None:
            gallery.close()
        if notifier is not None:
            notifier.close()
        hints.stop()
        kit.servers.join_probes(timeout=2.0)
        with contextlib.suppress(OSError):
            kit.ctx.clock.close()
        _restore_signals(previous)
    if hooks.clash is not None:
        code = EXIT_USAGE
    log.info("daemon_stopped", exit_code=code)
    return code


def _no_listener(_event: str, _data: Mapping[str, Any]) -> None:
    """No webhook and no banner configured."""


def _fan_out(listeners: list[EventSink]) -> EventSink:
    """One sink for the stages; the gallery joins once the context it needs exists."""

    def send(event: str, data: Mapping[str, Any]) -> None:
        for listener in list(listeners):
            listener(event, data)

    return send


def _gallery(cfg: Config, ctx: StageContext) -> GalleryRefresher | None:
    """Pages touched by finished work are rebuilt on their own thread (`[gallery] enabled`)."""
    if not cfg.gallery.enabled:
        return None
    from .gallery_refresh import GalleryRefresher  # noqa: PLC0415 - Jinja2 and Pillow

    return GalleryRefresher(ctx.layout, ctx.clock, ctx.identity, stale_s=cfg.coordination.lease_s)


def _notifier(cfg: Config) -> Notifier | None:
    if not (cfg.notify.webhook_url or cfg.notify.macos_banner):
        return None
    return Notifier(
        webhook_url=cfg.notify.webhook_url,
        host=host_id(cfg),
        root=str(cfg.paths.root),
        banner=cfg.notify.macos_banner,
        max_retries=cfg.notify.max_retries,
    )


def _hints(cfg: Config, ctx: StageContext, engine: Engine) -> Hints:
    """File events on each stage's input folder wake that stage (watch.mode = "auto")."""
    hints = Hints(ctx.settler)
    if cfg.watch.mode != "auto":
        return hints
    for stage in engine.stages:
        if stage.name in STAGE_FOLDERS:
            hints.route(ctx.layout.stage_input(stage.name), engine.wake[stage.name])
    why = hints.start()
    if why:
        get_logger().warning("file_events_unavailable", reason=why, fallback="rescans only")
    return hints


def _install_signals(engine: Engine) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, _frame: FrameType | None) -> None:
        # Only set flags here; the engine's run loop does the shutdown steps.
        engine.stop_reason = signal.Signals(signum).name
        engine.request_stop()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)
