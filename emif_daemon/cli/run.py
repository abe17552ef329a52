"""`emif run`: the daemon in the foreground, and the exit code each way of ending gets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emif_daemon import exit_codes
from emif_daemon.cli.arguments import config_of, stage_list
from emif_daemon.cli.commands import Command
from emif_daemon.config.schema import Config
from emif_daemon.daemon.wiring import (
    NO_STAGES_HINT,
    Refusal,
    await_root,
    enabled_stages,
    host_id,
    run_daemon,
)
from emif_daemon.engine.outcomes import RunOutcome
from emif_daemon.errors import ConfigError
from emif_daemon.logs import get_logger
from emif_daemon.observe.log_setup import configure_logging
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.control import pause
from emif_daemon.share.layout import Layout

EXIT_CODE: dict[RunOutcome | Refusal, int] = {
    RunOutcome.DRAINED: exit_codes.OK,
    RunOutcome.STOPPED: exit_codes.OK,  # on request: launchd must not restart it
    RunOutcome.PROBLEMS: exit_codes.FAILED,
    RunOutcome.SERVER_GAVE_UP: exit_codes.SERVER_DOWN,
    Refusal.NO_STAGES: exit_codes.USAGE,
    Refusal.HOST_ID_CLASH: exit_codes.USAGE,
    Refusal.NO_ROOT: exit_codes.USAGE,
}


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true", help="do all work discoverable now, then exit")
    p.add_argument("--stages", help="comma-separated subset of generate,upscale,segment")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on a terminal")
    p.add_argument("--paused", action="store_true", help="start paused (look first after a crash)")


def run(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    stages = stage_list(args.stages)
    host = host_id(cfg)
    layout = Layout(cfg.paths.root)
    bars = sys.stderr.isatty() and not args.no_progress
    if not enabled_stages(cfg, stages):
        configure_logging(host=host, level=cfg.logging.level, file=None)
        get_logger().error("no_stages", hint=NO_STAGES_HINT)
        return EXIT_CODE[Refusal.NO_STAGES]
    # Never build a tree where the share should be: wait for its marker (logging to the
    # terminal or launchd's log meanwhile, and to a log file of the config's own if it
    # names one), then log to the root as well.
    explicit = cfg.logging.file not in ("", "-")
    early = (Path(str(cfg.source)).parent / cfg.logging.file).resolve() if explicit else None
    configure_logging(host=host, level=cfg.logging.level, file=early, bars=bars)
    if not await_root(layout, interval_s=cfg.watch.rescan_interval_s, once=args.once):
        # --once: nothing can be done now; otherwise a signal ended the wait
        return EXIT_CODE[Refusal.NO_ROOT] if args.once else exit_codes.OK
    try:
        layout.ensure()
    except OSError as exc:
        raise ConfigError(
            [f"paths.root: cannot create the folders under {layout.root}: {exc.strerror}"],
            str(cfg.source),
        ) from exc
    log_file = _log_file(cfg, layout, host)
    configure_logging(host=host, level=cfg.logging.level, file=log_file, bars=bars)
    if args.paused:
        layout.control.mkdir(parents=True, exist_ok=True)
        pause(layout, host=host, reason="started with --paused", at=utc_stamp(), only_host=True)
    outcome = run_daemon(
        cfg, once=args.once, stage_names=stages, config_path=str(cfg.source or ""), bars=bars
    )
    code = EXIT_CODE[outcome]
    get_logger().info("daemon_stopped", outcome=str(outcome), exit_code=code)
    return code


def _log_file(cfg: Config, layout: Layout, host: str) -> Path | None:
    """`logging.file`: "-" none, a path of the config's own, else logs/<host>.jsonl."""
    if cfg.logging.file == "-":
        return None
    if cfg.logging.file:
        return (Path(str(cfg.source)).parent / cfg.logging.file).resolve()
    return layout.logs / f"{host}.jsonl"


COMMANDS = {"run": Command(arguments, run)}
