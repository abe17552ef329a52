"""`emif status`, `emif failures`, `emif report` and `emif logs`: what a person reads."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading

from emif_daemon import exit_codes
from emif_daemon.cli.arguments import config_of
from emif_daemon.cli.commands import Command
from emif_daemon.observe.log_view import LogFilter, follow, read_all, renderer
from emif_daemon.observe.metrics import read_rows
from emif_daemon.observe.report import build_report, render_report
from emif_daemon.observe.status import collect, failures
from emif_daemon.observe.status_text import failure_lines, render_table
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.layout import STAGES, Layout


def json_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def status(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    layout = Layout(cfg.paths.root)
    if not layout.root.is_dir():
        print(f"{layout.root}: no such folder (paths.root in {cfg.source})", file=sys.stderr)
        return exit_codes.USAGE
    clock = ServerClock(layout.clock, f"status.{os.getpid()}")
    now = clock.now_or_local()
    with contextlib.suppress(OSError):
        clock.close()
    disabled = {
        stage: f"{stage}.enabled = false in {cfg.source}"
        for stage in STAGES
        if not getattr(cfg, stage).enabled
    }
    found = collect(layout, server_now=now, lease_s=cfg.coordination.lease_s, disabled=disabled)
    print(json.dumps(found, indent=2) if args.json else render_table(found))
    return exit_codes.OK


def failures_command(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    failed = failures(Layout(cfg.paths.root))
    if args.json:
        print(json.dumps(failed, indent=2))
    else:
        for line in failure_lines(failed) or ["no failed item"]:
            print(line)
    return exit_codes.OK


def report(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    watts = {k: float(v) for k, v in cfg.report.watts.items()}
    totals = build_report(read_rows(Layout(cfg.paths.root).metrics), watts)
    print(json.dumps(totals, indent=2) if args.json else render_report(totals))
    return exit_codes.OK


def logs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=int, default=100, help="last N lines (0: all)")
    p.add_argument("--stage", choices=STAGES)
    p.add_argument("--level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--item", help="only items whose name contains this")
    p.add_argument("--host", help="only this host")


def logs(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    folder = Layout(cfg.paths.root).logs
    keep = LogFilter(stage=args.stage, level=args.level, item=args.item, host=args.host)
    show = renderer(colors=sys.stdout.isatty())
    events = [e for e in read_all(sorted(folder.glob("*.jsonl"))) if keep(e)]
    for event in events[-args.lines :] if args.lines else events:
        print(show(event), flush=True)
    if args.follow:
        stop = threading.Event()
        try:
            for event in follow(folder, stop):
                if keep(event):
                    print(show(event), flush=True)
        except KeyboardInterrupt:
            stop.set()
    return exit_codes.OK


COMMANDS = {
    "status": Command(json_argument, status),
    "failures": Command(json_argument, failures_command),
    "report": Command(json_argument, report),
    "logs": Command(logs_arguments, logs),
}
