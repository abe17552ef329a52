"""Operator controls on the shared root: retry failed items, pause and resume every host."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

from emif_daemon.logs import get_logger
from emif_daemon.share.atomic import atomic_write_json, rename_noreplace
from emif_daemon.share.claims import forget_broken
from emif_daemon.share.failure_records import FailureLog
from emif_daemon.share.layout import STAGES, Layout


def retry_failed(layout: Layout, stage: str | None = None) -> dict[str, int]:
    """Make failed items pending again; returns how many per stage.

    Deletes the failure record and the item's broken claims (its attempt count), and moves
    a finished prompts file back to queue/accepted so its failed items are planned again.
    """
    counts: dict[str, int] = {}
    for name in [stage] if stage else list(STAGES):
        log = FailureLog(layout.failed, name)
        keys = log.keys()
        for key in keys:
            record = log.read(key)
            batch = record.batch if record else None
            forget_broken(layout.broken, name, key)
            if batch:
                with contextlib.suppress(FileNotFoundError, FileExistsError):
                    rename_noreplace(layout.done / batch, layout.accepted / batch)
            log.forget(key)
        counts[name] = len(keys)
    return counts


def pause_path(layout: Layout, host: str | None = None) -> Path:
    """The farm-wide marker, or one host's (``emif run --paused``)."""
    name = f"pause-{host}.json" if host else "pause.json"
    return layout.control / name


def pause(layout: Layout, *, host: str, reason: str, at: str, only_host: bool = False) -> None:
    target = pause_path(layout, host if only_host else None)
    atomic_write_json(target, {"host": host, "reason": reason, "at": at})


def resume(layout: Layout) -> bool:
    """Remove the farm-wide marker and every host's; True if anything was paused."""
    removed = False
    for path in [pause_path(layout), *layout.control.glob("pause-*.json")]:
        try:
            path.unlink()
            removed = True
        except FileNotFoundError:
            pass
    return removed


def read_pause(path: Path) -> dict[str, Any] | None:
    """The pause marker, or None; an unreadable marker still means paused."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return {"host": "?", "reason": "unreadable pause marker", "at": ""}
    return doc if isinstance(doc, dict) else {"host": "?", "reason": "", "at": ""}


def paused(layout: Layout, host: str | None = None) -> dict[str, Any] | None:
    """Why this host must not claim: the farm-wide marker, else its own."""
    farm = read_pause(pause_path(layout))
    if farm is not None or host is None:
        return farm
    return read_pause(pause_path(layout, host))


class PauseGate:
    """The engine's `may_claim`: False while paused; logs `paused` / `resumed` once each."""

    def __init__(self, layout: Layout, host: str) -> None:
        self.layout = layout
        self.host = host
        self._was: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        try:
            now = paused(self.layout, self.host)
        except OSError:
            return False  # cannot tell: do not claim
        with self._lock:
            if (now is None) != (self._was is None):
                if now is not None:
                    get_logger().info(
                        "paused", by=now.get("host"), reason=now.get("reason"), at=now.get("at")
                    )
                else:
                    get_logger().info("resumed")
            self._was = now
        return now is None
