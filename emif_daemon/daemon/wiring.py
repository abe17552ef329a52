"""Wires config, layout, claims, stages and the engine into one running daemon.

The only module that knows every part: stages get a frozen `StageContext` and their own
config section, the engine gets its hooks as one object (docs/architecture.md#wiring).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import FrameType
from typing import TYPE_CHECKING, Any

from emif_daemon import __version__
from emif_daemon.config.schema import Config
from emif_daemon.daemon.hooks import (
    Awake,
    Completion,
    HostReport,
    Listeners,
    Metrics,
    Pause,
    RootWatch,
    Sweep,
)
from emif_daemon.daemon.servers import ServerPool
from emif_daemon.engine.hooks import Hook
from emif_daemon.engine.outcomes import RunOutcome
from emif_daemon.engine.runner import Engine, Timing
from emif_daemon.engine.stage import Stage, StageContext
from emif_daemon.events import EventSink
from emif_daemon.intake.completion import CompletionReporter
from emif_daemon.logs import get_logger
from emif_daemon.observe.notifications import Notifier
from emif_daemon.observe.progress_bars import TerminalProgress
from emif_daemon.retry import RetryPolicy
from emif_daemon.share.claims import ClaimStore
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.host_reports import host_id_clash
from emif_daemon.share.identity import HostIdentity, short_hostname
from emif_daemon.share.layout import STAGE_FOLDERS, STAGES, Layout
from emif_daemon.share.root_marker import root_problem
from emif_daemon.share.watch import Hints, Settler

if TYPE_CHECKING:
    from emif_daemon.dataset.gallery_refresher import GalleryRefresher
    from emif_daemon.stages.segment import SegmentStage


class Refusal(StrEnum):
    """Why a daemon did not run at all; the command line maps it to an exit code."""

    NO_STAGES = "no_stages"  # every requested stage is disabled
    HOST_ID_CLASH = "host_id_clash"  # another machine's live daemon uses our host id
    NO_ROOT = "no_root"  # the root's marker is missing (a share not mounted)


NO_STAGES_HINT = (
    "every requested stage is disabled: set generate/upscale/segment.enabled in the "
    "config, or name enabled ones in --stages"
)


def host_id(cfg: Config) -> str:
    return cfg.coordination.host_id or short_hostname()


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
    settler = Settler(cfg.watch.settle_s)
    return StageContext(layout, identity, clock, settler, events, cfg.watch.listing_cache_s)


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
    from emif_daemon.stages.generate import GenerateStage  # noqa: PLC0415 - HTTP and image code
    from emif_daemon.stages.upscale import UpscaleStage  # noqa: PLC0415

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
    from emif_daemon.stages.segment import SegmentStage  # noqa: PLC0415 - multiprocessing, model spec

    return SegmentStage(ctx, cfg.segment, builder=builder)


def enabled_stages(cfg: Config, requested: list[str] | None) -> list[str]:
    wanted = requested or list(STAGES)
    return [s for s in STAGES if s in wanted and getattr(cfg, s).enabled]


def await_root(layout: Layout, *, interval_s: float, once: bool) -> bool:
    """Wait until `layout.root` is the initialised root (its marker is there); False if the
    wait ended first (a signal, or `once`: nothing can be done now). Logs
    `share_unavailable` once and `share_back` when it comes (docs/protocol.md#the-root)."""
    problem = root_problem(layout)
    if problem is None:
        return True
    log = get_logger()
    log.error("share_unavailable", reason=problem)
    if once:
        return False
    stop = threading.Event()
    previous = _on_signals(lambda _signame: stop.set())
    try:
        while not stop.wait(min(interval_s, 5.0)):
            if root_problem(layout) is None:
                log.info("share_back", root=str(layout.root))
                return True
        return False
    finally:
        _restore_signals(previous)


def make_engine(
    cfg: Config, kit: StageKit, stages: list[Stage], hooks: Sequence[Hook], *, once: bool
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
            once_server_wait_s=cfg.server.once_wait_s,
        ),
        hooks=hooks,
        once=once,
    )


@dataclass
class SideJobs:
    """The daemon's hooks, and the ones the wiring talks to after start."""

    hooks: list[Hook]
    report: HostReport
    completion: CompletionReporter


def make_hooks(cfg: Config, kit: StageKit, events: EventSink) -> SideJobs | None:
    """The daemon's side jobs, after the start-up checks; None if another machine's live
    daemon uses our host id (said in the log)."""
    ctx = kit.ctx
    root = RootWatch(ctx.layout)
    completion = CompletionReporter(
        ctx.layout,
        tuple(enabled_stages(cfg, None)),
        events,
        every_s=cfg.watch.rescan_interval_s,
    )
    live_s = max(cfg.coordination.lease_s, 3 * cfg.coordination.heartbeat_s)
    report = HostReport(ctx, root, live_s)
    sweep = Sweep(ctx, root)
    jobs = SideJobs(
        [
            root,
            Pause(ctx.layout, ctx.host),
            Listeners(events),
            Metrics(ctx.layout, ctx.host),
            Awake(cfg.macos.prevent_sleep),
            report,
            sweep,
            Completion(completion, root),
        ],
        report,
        completion,
    )
    # A share that is full or away cannot tell us now; the keeper checks again each tick.
    now = ctx.clock.now_or_local()
    clash = host_id_clash(ctx.layout, ctx.identity, now, live_s)
    if clash is not None:
        get_logger().error("host_id_clash", reason=clash)
        return None
    with contextlib.suppress(OSError):
        sweep.sweep()
    return jobs


def run_daemon(
    cfg: Config,
    *,
    once: bool = False,
    stage_names: list[str] | None = None,
    stage_factory: StageFactory | None = None,
    config_path: str = "",
    bars: bool = False,
) -> RunOutcome | Refusal:
    """Run until SIGTERM/SIGINT (or, with `once`, until drained); how it ended."""
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
        return Refusal.NO_STAGES
    jobs = make_hooks(cfg, kit, events)
    if jobs is None:
        return Refusal.HOST_ID_CLASH
    engine = make_engine(cfg, kit, stages, jobs.hooks, once=once)
    jobs.report.on_clash = engine.request_stop
    hints = _hints(cfg, kit.ctx, engine)
    previous = _install_signals(engine)
    log.info(
        "daemon_started",
        version=__version__,
        config=config_path,
        root=str(kit.ctx.layout.root),
        queue=str(kit.ctx.layout.queue),
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
        outcome = engine.run()
        if once:  # this run may have completed a batch
            with contextlib.suppress(OSError):
                jobs.completion.check(now=True)
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
    return Refusal.HOST_ID_CLASH if jobs.report.clash is not None else outcome


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
    from emif_daemon.dataset.gallery_refresher import GalleryRefresher  # noqa: PLC0415 - Jinja2 and Pillow

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
    def stop(signame: str) -> None:
        # Only set flags here; the engine's run loop does the shutdown steps.
        engine.stop_reason = signame
        engine.request_stop()

    return _on_signals(stop)


def _on_signals(action: Callable[[str], None]) -> dict[int, Any]:
    """SIGTERM and SIGINT call `action` with the signal's name."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, _frame: FrameType | None) -> None:
        action(signal.Signals(signum).name)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)
