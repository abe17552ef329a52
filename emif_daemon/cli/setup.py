"""`emif init`, `emif check` and `emif launchd`: setting a Mac up to run the daemon."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emif_daemon import exit_codes
from emif_daemon.cli.arguments import config_of, stage_list
from emif_daemon.cli.commands import Command
from emif_daemon.daemon.servers import check_config
from emif_daemon.daemon.wiring import enabled_stages, host_id
from emif_daemon.errors import NotMacOS
from emif_daemon.macos import launchd
from emif_daemon.observe.log_setup import configure_logging
from emif_daemon.share.layout import Layout
from emif_daemon.share.root_marker import init_root


def init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", nargs="?", help="the root folder (default: paths.root)")


def init(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    layout = Layout(Path(args.root).expanduser().resolve() if args.root else cfg.paths.root)
    try:
        marker, created = init_root(layout, host_id(cfg))
    except OSError as exc:
        print(f"emif init: cannot set up {layout.root}: {exc.strerror}", file=sys.stderr)
        return exit_codes.FAILED
    if created:
        print(
            f"initialised {layout.root} (root id {marker.root_id}); every Mac's paths.root "
            "must be this folder on the share"
        )
    else:
        print(
            f"{layout.root} is a root already (id {marker.root_id}, made "
            f"{marker.created} by {marker.created_by}); nothing changed"
        )
    return exit_codes.OK


def check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stages", help="comma-separated subset of generate,upscale")
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="pass names Draw Things' files here cannot verify",
    )


def check(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    configure_logging(host=host_id(cfg), level="critical")  # only the lines printed
    stages = enabled_stages(cfg, stage_list(args.stages))
    lines, ok = check_config(cfg, stages, allow_unverified=args.allow_unverified)
    for line in lines:
        print(line)
    return exit_codes.OK if ok else exit_codes.FAILED


def launchd_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("install", "uninstall", "print"))


def launchd_command(args: argparse.Namespace) -> int:
    cfg = config_of(args)
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
        return exit_codes.OK
    try:
        if args.action == "install":
            if problems:
                return exit_codes.FAILED
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
    except NotMacOS:
        print(
            f"emif launchd {args.action}: launchd exists only on macOS; "
            "`emif launchd print` still shows the plist",
            file=sys.stderr,
        )
        return exit_codes.USAGE
    except OSError as exc:
        print(f"emif launchd {args.action}: {exc}", file=sys.stderr)
        return exit_codes.FAILED
    return exit_codes.OK


COMMANDS = {
    "init": Command(init_arguments, init),
    "check": Command(check_arguments, check),
    "launchd": Command(launchd_arguments, launchd_command),
}
