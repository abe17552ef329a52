"""`emif gallery` and `emif export`: what they print and the exit code they end with."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from emif_daemon import exit_codes
from emif_daemon.cli.arguments import config_of
from emif_daemon.cli.commands import Command, no_arguments
from emif_daemon.config.schema import Config
from emif_daemon.dataset.export import export_dataset
from emif_daemon.dataset.gallery_refresher import build_with_lock
from emif_daemon.errors import LockBusy
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import Layout


def existing_root(cfg: Config) -> Layout | None:
    """The root, if it holds a data set: never write a gallery where a share should be."""
    layout = Layout(cfg.paths.root)
    if not layout.generations.is_dir():
        print(
            f"{layout.generations}: no such folder (paths.root in {cfg.source}); is the share "
            "mounted?",
            file=sys.stderr,
        )
        return None
    return layout


def gallery_command(cfg: Config, *, wait_s: float, force: bool) -> int:
    layout = existing_root(cfg)
    if layout is None:
        return exit_codes.USAGE
    clock = ServerClock(layout.clock, f"gallery.{os.getpid()}")
    identity = HostIdentity.current(cfg.coordination.host_id)
    try:
        report = build_with_lock(
            layout, clock, identity, stale_s=cfg.coordination.lease_s, wait_s=wait_s, force=force
        )
    except LockBusy as exc:
        print(f"emif gallery: {exc}", file=sys.stderr)
        return exit_codes.FAILED
    except OSError as exc:
        print(f"emif gallery: cannot write under {layout.root}: {exc}", file=sys.stderr)
        return exit_codes.FAILED
    finally:
        with contextlib.suppress(OSError):
            clock.close()
    print(report.summary())
    print(f"open {(layout.gallery / 'index.html').as_uri()}")
    return exit_codes.OK


def export_command(cfg: Config) -> int:
    layout = existing_root(cfg)
    if layout is None:
        return exit_codes.USAGE
    try:
        report = export_dataset(layout)
    except OSError as exc:
        print(f"emif export: cannot write under {layout.root}: {exc}", file=sys.stderr)
        return exit_codes.FAILED
    print(f"{report.rows} image(s): {report.jsonl}, {report.csv}, card {report.card}")
    print(f'load: datasets.load_dataset("imagefolder", data_dir="{layout.generations}")')
    return exit_codes.OK


def gallery_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="render every page again")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for another host")


COMMANDS = {
    "gallery": Command(
        gallery_arguments,
        lambda args: gallery_command(config_of(args), wait_s=args.wait, force=args.force),
    ),
    "export": Command(no_arguments, lambda args: export_command(config_of(args))),
}
