"""Operator controls on the shared root: retry failed items, pause and resume every host."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from .claims import forget_broken
from .files import atomic_write_json, rename_noreplace
from .layout import STAGES, Layout


def retry_failed(layout: Layout, stage: str | None = None) -> dict[str, int]:
    """Make failed items pending again; returns how many per stage.

    Deletes the failure record and the item's broken claims (its attempt count), and moves
    a finished prompts file back to queue/accepted so its failed items are planned again.
    """
    counts: dict[str, int] = {}
    for name in [stage] if stage else list(STAGES):
        top = layout.failed / name
        counts[name] = 0
        for dirpath, _dirs, files in os.walk(top):
            for fname in files:
                if not fname.endswith(".json") or fname.startswith("."):
                    continue
                path = Path(dirpath) / fname
                key = path.relative_to(top).as_posix().removesuffix(".json")
                record: dict[str, Any] = {}
                with contextlib.suppress(OSError, ValueError):
                    record = json.loads(path.read_bytes())
                forget_broken(layout.state / "broken", name, key)
                batch = record.get("batch") if isinstance(record, dict) else None
                if batch:
                    with contextlib.suppress(FileNotFoundError, FileExistsError):
                        rename_noreplace(layout.done / batch, layout.accepted / batch)
                path.unlink(missing_ok=True)
                counts[name] += 1
    return counts


def pause_path(layout: Layout) -> Path:
    return layout.control / "pause.json"


def pause(layout: Layout, *, host: str, reason: str, at: str) -> None:
    atomic_write_json(pause_path(layout), {"host": host, "reason": reason, "at": at})


def resume(layout: Layout) -> bool:
    try:
        pause_path(layout).unlink()
    except FileNotFoundError:
        return False
    return True


def paused(layout: Layout) -> dict[str, Any] | None:
    """The pause marker, or None; an unreadable marker still means paused."""
    path = pause_path(layout)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return {"host": "?", "reason": "unreadable pause marker", "at": ""}
    return doc if isinstance(doc, dict) else {"host": "?", "reason": "", "at": ""}
