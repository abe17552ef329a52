"""`emif gallery` and `emif export`: what they print and the exit code they end with (the
same codes as cli.py's EXIT_*)."""

from __future__ import annotations

import contextlib
import os
import sys

from .clock import ServerClock
from .config import Config
from .export import export_dataset
from .gallery_refresh import LockBusy, build_with_lock
from .identity import HostIdentity
from .layout import Layout

OK, FAILED, USAGE = 0, 1, 2


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
        return USAGE
    clock = ServerClock(layout.clock, f"gallery.{os.getpid()}")
    identity = HostIdentity.current(cfg.coordination.host_id)
    try:
        report = build_with_lock(
            layout, clock, identity, stale_s=cfg.coordination.lease_s, wait_s=wait_s, force=force
        )
    except LockBusy as exc:
        print(f"emif gallery: {exc}", file=sys.stderr)
        return FAILED
    except OSError as exc:
        print(f"emif gallery: cannot write under {layout.root}: {exc}", file=sys.stderr)
        return FAILED
    finally:
        with contextlib.suppress(OSError):
            clock.close()
    print(report.summary())
    print(f"open {(layout.gallery / 'index.html').as_uri()}")
    return OK


def export_command(cfg: Config) -> int:
    layout = existing_root(cfg)
    if layout is None:
        return USAGE
    try:
        report = export_dataset(layout)
    except OSError as exc:
        print(f"emif export: cannot write under {layout.root}: {exc}", file=sys.stderr)
        return FAILED
    print(f"{report.rows} image(s): {report.jsonl}, {report.csv}, card {report.card}")
    print(f'load: datasets.load_dataset("imagefolder", data_dir="{layout.generations}")')
    return OK
