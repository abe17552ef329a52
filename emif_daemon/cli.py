"""`emif`: commands → exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__, cli_batches
from .cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .cli_common import config_of as _config
from .config import load_config, resolve_config_path
from .errors import ConfigError
from .layout import STAGES, Layout


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
    from .daemon import NO_STAGES_HINT, await_root, enabled_stages, host_id, run_daemon  # noqa: PLC0415
    from .logs import configure_logging, get_logger  # noqa: PLC0415

    cfg = _config(args)
    stages = _stage_list(args.stages)
    host = host_id(cfg)
    layout = Layout(cfg.paths.root)
    bars = sys.stderr.isatty() and not args.no_progress
    if not enabled_stages(cfg, stages):
        configure_logging(host=host, level=cfg.logging.level, file=None)
        get_logger().error("no_stages", hint=NO_STAGES_HINT)
        return EXIT_USAGE
    # Never build a tree where the share should be: wait for its marker (logging to the
    # terminal or launchd's log meanwhile, and to a log file of the config's own if it
    # names one), then log to the root as well.
    explicit = cfg.logging.file not in ("", "-")
    early = (Path(str(cfg.source)).parent / cfg.logging.file).resolve() if explicit else None
    configure_logging(host=host, level=cfg.logging.level, file=early, bars=bars)
    if not await_root(layout, interval_s=cfg.watch.rescan_interval_s, once=args.once):
        return EXIT_USAGE if args.once else EXIT_OK
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
    configure_logging(host=host, level=cfg.logging.level, file=log_file, bars=bars)
    if args.paused:
        from .control import pause  # noqa: PLC0415

        layout.control.mkdir(parents=True, exist_ok=True)
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pause(layout, host=host, reason="started with --paused", at=at, only_host=True)
    return run_daemon(
        cfg, once=args.once, stage_names=stages, config_path=str(cfg.source or ""), bars=bars
    )


def cmd_init(args: argparse.Namespace) -> int:
    from .daemon import host_id  # noqa: PLC0415
    from .rootmark import init_root  # noqa: PLC0415

    cfg = _config(args)
    layout = Layout(Path(args.root).expanduser().resolve() if args.root else cfg.paths.root)
    try:
        marker, created = init_root(layout, host_id(cfg))
    except OSError as exc:
        print(f"emif init: cannot set up {layout.root}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    if created:
        print(f"initialised {layout.root} (root id {marker.root_id}); every Mac's paths.root "
              "must be this folder on the share")  # fmt: skip
    else:
        print(f"{layout.root} is a root already (id {marker.root_id}, made "
              f"{marker.created} by {marker.created_by}); nothing changed")  # fmt: skip
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .clock import ServerClock  # noqa: PLC0415
    from .status import collect  # noqa: PLC0415
    from .status_text import render_table  # noqa: PLC0415

    cfg = _config(args)
    layout = Layout(cfg.paths.root)
    if not layout.root.is_dir():
        print(f"{layout.root}: no such folder (paths.root in {cfg.source})", file=sys.stderr)
        return EXIT_USAGE
    clock = ServerClock(layout.clock, f"status.{os.getpid()}")
    now = clock.now_or_local()
    with contextlib.suppress(OSError):
        clock.close()
    disabled = {
        stage: f"{stage}.enabled = false in {cfg.source}"
        for stage in STAGES
        if not getattr(cfg, stage).enabled
    }
    status = collect(layout, server_now=now, lease_s=cfg.coordination.lease_s, disabled=disabled)
    print(json.dumps(status, indent=2) if args.json else render_table(status))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    from .control import retry_failed  # noqa: PLC0415

    if args.file:
        return cli_batches.retry_file(args)
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
    problems = list(parsed.problems)
    if not problems:
        problems = _payload_problems(args, parsed.jobs)
    for problem in problems:
        print(f"{path}: {problem}")
    if problems:
        return EXIT_FAILED
    count = sum(j.count for j in parsed.jobs)
    print(f"{path}: valid, {len(parsed.jobs)} job(s), {count} item(s)")
    return EXIT_OK


def _payload_problems(args: argparse.Namespace, jobs: list[Any]) -> list[str]:
    """Each job's payload overrides against the keys and ranges of the server dialect of
    the config's recipe (no config file: not checked)."""
    from .dialects import jobs_problems  # noqa: PLC0415

    config = resolve_config_path(getattr(args, "config", None))
    if not config.exists() and not getattr(args, "config", None):
        return []
    return jobs_problems(load_config(config).generate.payload, jobs)


def cmd_check(args: argparse.Namespace) -> int:
    from .daemon import enabled_stages, host_id  # noqa: PLC0415
    from .logs import configure_logging  # noqa: PLC0415
    from .preflight import check_config  # noqa: PLC0415

    cfg, allow = _config(args), args.allow_unverified
    configure_logging(host=host_id(cfg), level="critical")  # only the lines printed
    lines, ok = check_config(cfg, enabled_stages(cfg, _stage_list(args.stages)), allow=allow)
    for line in lines:
        print(line)
    return EXIT_OK if ok else EXIT_FAILED


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
    home = Path.home()
    text = launchd.render(config=Path(str(cfg.source)), root=cfg.paths.root, home=home)
    local = {"the config file": Path(str(cfg.source)), "emif": Path(launchd.emif_executable())}
    if cfg.segment.enabled:
        local["the segment checkpoint"] = cfg.segment.checkpoint
    problems = launchd.network_volume_problems(local, cfg.paths.root)
    for problem in problems:
        print(f"emif launchd: {problem}", file=sys.stderr)
    if args.action == "print":
        print(text, end="")
        return EXIT_OK
    try:
        if args.action == "install":
            if problems:
                return EXIT_FAILED
            path = launchd.install(text, home=home)
            print(f"installed and loaded {path}")
            print(
                "under launchd, macOS asks no one before refusing the share: grant "
                f"{launchd.interpreter()} access in System Settings → Privacy & Security → "
                "Files and Folders → Network Volumes (or Full Disk Access); granting Terminal "
                f"does not cover it. launchd's own output: {launchd.log_dir(home)}"
            )
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


def cmd_gallery(args: argparse.Namespace) -> int:
    from .dataset_commands import gallery_command  # noqa: PLC0415

    return gallery_command(_config(args), wait_s=args.wait, force=args.force)


def cmd_export(args: argparse.Namespace) -> int:
    from .dataset_commands import export_command  # noqa: PLC0415

    return export_command(_config(args))


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

    p = command(
        "init",
        cmd_init,
        "set up a new shared root (folders and marker) once; check the share is mounted",
    )
    p.add_argument("root", nargs="?", help="the root folder (default: paths.root)")
    p = command("run", cmd_run, "run the daemon in the foreground")
    p.add_argument("--once", action="store_true", help="do all work discoverable now, then exit")
    p.add_argument("--stages", help="comma-separated subset of generate,upscale,segment")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on a terminal")
    p.add_argument("--paused", action="store_true", help="start paused (look first after a crash)")
    p = command("status", cmd_status, "pending, working, done and failed items per stage")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("validate", cmd_validate, "check a prompts file; exit 1 if it has problems")
    p.add_argument("file")
    p = command("check", cmd_check, "can the servers do what the recipes say? exit 1 if not")
    p.add_argument("--stages", help="comma-separated subset of generate,upscale")
    p.add_argument("--allow-unverified", action="store_true",
                   help="pass names Draw Things' files here cannot verify")  # fmt: skip
    p = command("enqueue", cmd_enqueue, "copy a prompts file into queue/ safely")
    p.add_argument("file")
    p.add_argument("--force", action="store_true", help="enqueue even if invalid")
    p = command("retry", cmd_retry, "make failed items pending again")
    p.add_argument("--stage", choices=STAGES)
    p.add_argument("--file", help="a corrected prompts file: replaces the plan of its batch")
    cli_batches.add_commands(command)
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
    p = command("gallery", cmd_gallery, "write the static gallery under <root>/gallery/")
    p.add_argument("--force", action="store_true", help="render every page again")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for another host")
    command("export", cmd_export, "metadata.jsonl/.csv and a data-set card for the images")
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
    except BrokenPipeError:
        # `emif status | head`: the reader left; say nothing more (and nothing at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
