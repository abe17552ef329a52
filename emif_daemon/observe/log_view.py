"""`emif logs`: the JSON log files as readable lines, filtered, optionally followed.

Raw JSON stays the file format; this is for people who would rather not read it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


@dataclass(frozen=True)
class LogFilter:
    stage: str | None = None
    level: str | None = None
    item: str | None = None
    host: str | None = None

    def __call__(self, event: dict[str, Any]) -> bool:
        if self.stage and event.get("stage") != self.stage:
            return False
        if self.item and self.item not in str(event.get("item", "")):
            return False
        if self.host and event.get("host") != self.host:
            return False
        if self.level:
            return LEVELS.get(str(event.get("level")), 0) >= LEVELS[self.level]
        return True


def parse_line(line: str) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None  # a line still being written, or not ours
    return event if isinstance(event, dict) and "event" in event else None


def renderer(colors: bool) -> Callable[[dict[str, Any]], str]:
    render = structlog.dev.ConsoleRenderer(colors=colors)
    return lambda event: str(render(None, "", dict(event)))


def read_all(files: list[Path]) -> list[dict[str, Any]]:
    events = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            events += [e for e in map(parse_line, fh) if e is not None]
    events.sort(key=lambda e: str(e.get("timestamp", "")))
    return events


def follow(folder: Path, stop: threading.Event, interval: float = 0.5) -> Iterator[dict[str, Any]]:
    """New events from every `*.jsonl` in `folder` (new files too), until `stop` is set."""
    offsets: dict[Path, int] = {p: p.stat().st_size for p in folder.glob("*.jsonl")}
    partial: dict[Path, str] = {}
    while not stop.is_set():
        for path in sorted(folder.glob("*.jsonl")):
            start = offsets.get(path, 0)
            with open(path, encoding="utf-8", errors="replace") as fh:
                fh.seek(start)
                chunk = fh.read()
                offsets[path] = fh.tell()
            text = partial.pop(path, "") + chunk
            lines = text.split("\n")
            if lines[-1]:
                partial[path] = lines[-1]
            for line in lines[:-1]:
                event = parse_line(line)
                if event is not None:
                    yield event
        stop.wait(interval)
