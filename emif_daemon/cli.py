"""`emif`: commands → exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from . import __version__
from .config import Config, load_config, resolve_config_path
from .errors import ConfigError
from .layout import STAGES, Layout

EXIT_OK = 0
EXIT_FAILED = 1  # some items failed, a file is invalid
EXIT_USAGE = 2  # bad config or arguments, or not possible on this system


def _config(args: argparse.Namespace) -> Config:
    path = resolve_config_path(getattr(args, "config", None))
    return load_config(path)


def _stage_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ConfigError([f"--stages: unknown stage {', '.join(unknown)}; known: generate, "
                           "upscale, segment"])  # fmt: skip
    return names


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import host_id, run_daemon  # noqa: PLC0415
    from .logs import configure_logging  # noqa: PLC0415

    cfg = _config(args)
    stages = _stage_list(args.stages)
    host = host_id(cfg)
    layout = Layout(cfg.paths.root)
    if not layout.root.parent.is_dir():
        raise ConfigError(
            [f"paths.root: the folder above {layout.root} does not exist; is the share mounted?"],
            str(cfg.source),
        )
    try:
        layout.ensure()
    except OSError as exc:
        raise ConfigError(
            [f"paths.root: cannot create the folders under {layout.root}: {exc.strerror}"],
            str(cfg.source),
        ) from exc
    log_file: Path | None
    if cfg.logging.file == "-":
        log_file = None
    elif cfg.logging.file:
        log_file = (Path(str(cfg.source)).parent / cfg.logging.file).resolve()
    else:
        log_file = layout.logs / f"{host}.jsonl"
    bars = sys.stderr.isatty() and not args.no_progress
    configure_logging(host=host, level=cfg.logging.level, file=log_file, bars=bars)
    if args.paused:
        from .control import pause  # noqa: PLC0415

        layout.control.mkdir(parents=True, exist_ok=True)
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pause(layout, host=host, reason="started with --paused", at=at, only_host=True)
    return run_daemon(
        cfg, once=args.once, stage_names=stages, config_path=str(cfg.source or ""), bars=bars
    )


def cmd_status(args: argparse.Namespace) -> int:
    import os  # noqa: PLC0415

    from .clock import ServerClock  # noqa: PLC0415
    from .status import collect, render_table  # noqa: PLC0415

    cfg = _config(args)
    layout = Layout(cfg.paths.root)
    if not layout.root.is_dir():
        print(f"{layout.root}: no such folder (paths.root in {cfg.source})", file=sys.stderr)
        return EXIT_USAGE
    clock = ServerClock(layout.clock, f"status.{os.getpid()}")
    now = clock.now_or_local()
    with contextlib.suppress(OSError):
        clock.close()
    status = collect(layout, server_now=now, lease_s=cfg.coordination.lease_s)
    print(json.dumps(status, indent=2) if args.json else render_table(status))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    from .control import retry_failed  # noqa: PLC0415

    cfg = _config(args)
    counts = retry_failed(Layout(cfg.paths.root), args.stage)
    for stage, n in counts.items():
        print(f"{stage}: {n} failed item(s) made pending again")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from .prompts import parse  # noqa: PLC0415

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    parsed = parse(data)
    for problem in parsed.problems:
        print(f"{path}: {problem}")
    if parsed.problems:
        return EXIT_FAILED
    count = sum(j.count for j in parsed.jobs)
    print(f"{path}: valid, {len(parsed.jobs)} job(s), {count} item(s)")
    return EXIT_OK


def cmd_enqueue(args: argparse.Namespace) -> int:
    from .files import publish_new  # noqa: PLC0415
    from .prompts import parse  # noqa: PLC0415

    cfg = _config(args)
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    problems = parse(data).problems
    if problems and not args.force:
        for problem in problems:
            print(f"{path}: {problem}")
        print(f"{path}: not enqueued; fix it or pass --force", file=sys.stderr)
        return EXIT_FAILED
    layout = Layout(cfg.paths.root)
    layout.queue.mkdir(parents=True, exist_ok=True)
    target = layout.queue / path.name
    try:
        publish_new(target, data)  # temporary name, then rename: never read half-copied
    except FileExistsError:
        print(f"{target} exists already; rename your file", file=sys.stderr)
        return EXIT_FAILED
    print(f"enqueued {target}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .metrics import read_rows  # noqa: PLC0415
    from .report import build_report, render_report  # noqa: PLC0415

    cfg = _config(args)
    watts = {k: float(v) for k, v in cfg.report.watts.items()}
    report = build_report(read_rows(Layout(cfg.paths.root).metrics), watts)
    print(json.dumps(report, indent=2) if args.json else render_report(report))
    return EXIT_OK


def cmd_launchd(args: argparse.Namespace) -> int:
    from . import launchd  # noqa: PLC0415

    cfg = _config(args)
    if args.action == "print":
        print(launchd.render(config=Path(str(cfg.source)), root=cfg.paths.root), end="")
        return EXIT_OK
    home = Path.home()
    try:
        if args.action == "install":
            text = launchd.render(config=Path(str(cfg.source)), root=cfg.paths.root)
            path = launchd.install(text, home=home)
            print(f"installed and loaded {path}")
        else:
            removed = launchd.uninstall(home=home)
            print(f"unloaded and removed {removed}" if removed else "was not installed")
    except launchd.NotMacOS:
        print(
            f"emif launchd {args.action}: launchd exists only on macOS; "
            "`emif launchd print` still shows the plist",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except OSError as exc:
        print(f"emif launchd {args.action}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    import threading  # noqa: PLC0415

    from .logview import LogFilter, follow, read_all, renderer  # noqa: PLC0415

    cfg = _config(args)
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
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    from .control import pause  # noqa: PLC0415
    from .daemon import host_id  # noqa: PLC0415

    cfg = _config(args)
    layout = Layout(cfg.paths.root)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    pause(layout, host=host_id(cfg), reason=args.reason or "", at=at)
    print(f"paused every host on {layout.root}; they finish the item in hand first")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    from .control import resume  # noqa: PLC0415

    cfg = _config(args)
    was = resume(Layout(cfg.paths.root))
    print("resumed" if was else "was not paused")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emif", description="Unattended txt2img → upscale → Segment Anything pipeline."
    )
    parser.add_argument("--version", action="version", version=f"emif-daemon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: object, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="config file (default: $EMIF_CONFIG, else ./config.toml)")
        p.set_defaults(func=func)
        return p

    p = command("run", cmd_run, "run the daemon in the foreground")
    p.add_argument("--once", action="store_true", help="do all work discoverable now, then exit")
    p.add_argument("--stages", help="comma-separated subset of generate,upscale,segment")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on a terminal")
    p.add_argument("--paused", action="store_true", help="start paused (look first after a crash)")
    p = command("status", cmd_status, "pending, working, done and failed items per stage")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("validate", cmd_validate, "check a prompts file; exit 1 if it has problems")
    p.add_argument("file")
    p = command("enqueue", cmd_enqueue, "copy a prompts file into queue/ safely")
    p.add_argument("file")
    p.add_argument("--force", action="store_true", help="enqueue even if invalid")
    p = command("retry", cmd_retry, "make failed items pending again")
    p.add_argument("--stage", choices=STAGES)
    p = command("report", cmd_report, "totals from the metrics files")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("launchd", cmd_launchd, "install, uninstall or print the LaunchAgent")
    p.add_argument("action", choices=("install", "uninstall", "print"))
    p = command("logs", cmd_logs, "the JSON log as readable lines")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=int, default=100, help="last N lines (0: all)")
    p.add_argument("--stage", choices=STAGES)
    p.add_argument("--level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--item", help="only items whose name contains this")
    p.add_argument("--host", help="only this host")
    p = command("pause", cmd_pause, "every host finishes its item in hand, then claims nothing")
    p.add_argument("--reason", help="shown by emif status")
    command("resume", cmd_resume, "undo emif pause")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"emif: configuration error in {exc.path or 'arguments'}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
