"""`emif pause` and `emif resume`: every host finishes its item in hand and claims nothing
more, or goes on."""

from __future__ import annotations

import argparse

from emif_daemon import exit_codes
from emif_daemon.cli.arguments import config_of
from emif_daemon.cli.commands import Command, no_arguments
from emif_daemon.daemon.wiring import host_id
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.control import pause, resume
from emif_daemon.share.layout import Layout


def pause_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", help="shown by emif status")


def pause_command(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    layout = Layout(cfg.paths.root)
    pause(layout, host=host_id(cfg), reason=args.reason or "", at=utc_stamp())
    print(f"paused every host on {layout.root}; they finish the item in hand first")
    return exit_codes.OK


def resume_command(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    was = resume(Layout(cfg.paths.root))
    print("resumed" if was else "was not paused")
    return exit_codes.OK


COMMANDS = {
    "pause": Command(pause_arguments, pause_command),
    "resume": Command(no_arguments, resume_command),
}
