"""Wires config, layout, claims, stages and the engine into one running daemon."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from . import __version__
from .claims import ClaimStore
from .config import Config
from .control import PauseGate
from .engine import Engine, Stage
from .files import MACHINE, atomic_write_json, clean_orphans
from .layout import STAGES, Layout
from .logs import get_logger
from .metrics import MetricsWriter
from .notify import Notifier
from .power import SleepGuard
from .progress import TerminalProgress
from .retry import RetryPolicy
from .watch import Hints, Settler

if TYPE_CHECKING:
    from .sdapi import Server

ORPHAN_MAX_AGE_S = 6 * 3600
EXIT_USAGE = 2
NO_STAGES_HINT = (
    "every requested stage is disabled: set generate/upscale/segment.enabled in the "
    "config, or name enabled ones in --stages"
)


def host_id(cfg: Config) -> str:
    return cfg.coordination.host_id or MACHINE


@dataclass
class Runtime:
    """What every stage shares: the root, this host, the claim store, the settler."""

    cfg: Config
    layout: Layout
    host: str
    store: ClaimStore
    settler: Settler
    on_event: Callable[[str, dict[str, Any]], None]
    servers: dict[str, Server] = field(default_factory=dict)  # by URL, shared by stages


def make_runtime(cfg: Config, on_event: Callable[[str, dict[str, Any]], None]) -> Runtime:
    layout = Layout(cfg.paths.root)
    layout.ensure()
    host = host_id(cfg)
    store = ClaimStore(
        layout.claims,
        layout.state / "broken",
        layout.clock,
        host=host,
        lease_s=cfg.coordination.lease_s,
    )
    return Runtime(cfg, layout, host, store, Settler(cfg.watch.settle_s), on_event)


def build_stages(rt: Runtime, names: list[str]) -> list[Stage]:
    """The enabled stages among `names`, downstream first (they win a shared server)."""
    from .stages import build  # noqa: PLC0415 - stages pull in HTTP and image code

    return [build(name, rt) for name in names]


def enabled_stages(cfg: Config, requested: list[str] | None) -> list[str]:
    wanted = requested or list(STAGES)
    return [s for s in STAGES if s in wanted and getattr(cfg, s).enabled]


def run_daemon(
    cfg: Config,
    *,
    once: bool = False,
    stage_names: list[str] | None = None,
    stage_factory: Callable[[Runtime], list[Stage]] | None = None,
    may_claim: Callable[[], bool] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    config_path: str = "",
    bars: bool = False,
) -> int:
    """Run until SIGTERM/SIGINT (or, with `once`, until drained); returns the exit code."""
    log = get_logger()
    notifier = _notifier(cfg)
    listeners = [f for f in (on_event, notifier) if f is not None]

    def publish(event: str, data: dict[str, Any]) -> None:
        for listener in listeners:
            listener(event, data)

    rt = make_runtime(cfg, publish)
    stages = (
        stage_factory(rt) if stage_factory else build_stages(rt, enabled_stages(cfg, stage_names))
    )
    if not stages:
        log.error("no_stages", hint=NO_STAGES_HINT)
        return EXIT_USAGE
    sweep = _sweeper(rt)
    sweep()
    engine = _engine(cfg, rt, stages, once=once, sweep=sweep, may_claim=may_claim)
    hints = _hints(cfg, rt, engine)
    previous = _install_signals(engine)
    log.info(
        "daemon_started",
        version=__version__,
        config=config_path,
        root=str(rt.layout.root),
        stages=[s.name for s in stages],
        once=once,
        pid=os.getpid(),
    )
    from .stages.common import probe_servers  # noqa: PLC0415 - stages pull in HTTP code

    probe_servers(rt)
    progress = TerminalProgress(lambda: engine.stats) if bars else None
    if progress is not None:
        progress.start()
    try:
        code = engine.run()
    finally:
        # After the engine: bars drawn last, queued notifications flushed, watchers stopped.
        if progress is not None:
            progress.stop()
        if notifier is not None:
            notifier.close()
        hints.stop()
        _restore_signals(previous)
    log.info("daemon_stopped", exit_code=code)
    return code


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


def _sweeper(rt: Runtime) -> Callable[[], None]:
    """Removes temp files of dead writers anywhere under the root, logging each."""
    log = get_logger()

    def sweep() -> None:
        removed = clean_orphans(
            [rt.layout.root],
            host=MACHINE,
            server_now=rt.store.server_now(),
            max_age_s=ORPHAN_MAX_AGE_S,
            alive=psutil.pid_exists,
        )
        for path in removed:
            log.info("orphan_removed", path=str(path))

    return sweep


def _engine(
    cfg: Config,
    rt: Runtime,
    stages: list[Stage],
    *,
    once: bool,
    sweep: Callable[[], None],
    may_claim: Callable[[], bool] | None,
) -> Engine:
    return Engine(
        stages=stages,
        store=rt.store,
        failed_dir=rt.layout.failed,
        retry=RetryPolicy(
            max_attempts=cfg.server.max_attempts,
            base_s=cfg.server.backoff_s,
            cap_s=max(60.0, cfg.server.backoff_s),
        ),
        rescan_s=cfg.watch.rescan_interval_s,
        settle_s=cfg.watch.settle_s,
        heartbeat_s=cfg.coordination.heartbeat_s,
        once=once,
        metrics=MetricsWriter(rt.layout.metrics / rt.host),
        may_claim=may_claim or PauseGate(rt.layout, rt.host),
        on_event=rt.on_event,
        sweep=sweep,
        report=lambda state: write_host_report(rt, state),
        progress_s=cfg.logging.progress_s,
        on_busy=SleepGuard(cfg.macos.prevent_sleep).busy,
    )


def _hints(cfg: Config, rt: Runtime, engine: Engine) -> Hints:
    """File events on each stage's input folder wake that stage (watch.mode = "auto")."""
    hints = Hints(rt.settler)
    if cfg.watch.mode != "auto":
        return hints
    inputs = {"generate": rt.layout.queue, "upscale": rt.layout.generations}
    inputs["segment"] = rt.layout.upscaled
    for stage in engine.stages:
        if stage.name in inputs:
            hints.route(inputs[stage.name], engine.wake[stage.name])
    why = hints.start()
    if why:
        get_logger().warning("file_events_unavailable", reason=why, fallback="rescans only")
    return hints


def write_host_report(rt: Runtime, state: dict[str, Any]) -> None:
    """`.emif/hosts/<host>.json`: what `emif status` shows about this daemon."""
    atomic_write_json(
        rt.layout.state / "hosts" / f"{rt.host}.json",
        {
            **state,
            "pid": os.getpid(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def _install_signals(engine: Engine) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, _frame: Any) -> None:
        # Only set flags here; the engine's run loop does the shutdown steps.
        engine.stop_reason = signal.Signals(signum).name
        engine.request_stop()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)
