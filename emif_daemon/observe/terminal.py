"""The log as a person at a terminal reads it: one short line per finished image, the
start-up line saying where to drop files, errors in full; the chatter of claims and
requests only at `logging.level = "debug"` (the JSON log file keeps every event)."""

from __future__ import annotations

import logging
import time
from typing import Any

from structlog.typing import EventDict, WrappedLogger

from emif_daemon.share.clock import parse_utc

# Said for every item or request: on a terminal only when debugging.
CHATTY = frozenset(
    {
        "item_claimed",
        "request_sent",
        "server_detected",
        "claim_released",
        "first_scan",
        "preflight_ok",
        "app_settings_used",
        "orphan_removed",
        "skipped_existing",
        "heartbeat_failed",
        "hook_recovered",
        "progress",
    }
)
_SKIP = frozenset({"event", "level", "timestamp", "host", "stage", "item", "logger"})


class QuietFilter(logging.Filter):
    """Keeps CHATTY events off the terminal unless the level is debug."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if self.debug or not isinstance(record.msg, dict):
            return True
        return record.msg.get("event") not in CHATTY


def _clock(event: EventDict) -> str:
    """Local time of day: what a person at the Mac compares with their watch."""
    stamp = event.get("timestamp")
    at = parse_utc(stamp) if isinstance(stamp, str) else None
    return time.strftime("%H:%M:%S", time.localtime(at))


def render(_logger: WrappedLogger, _name: str, event: EventDict) -> str:
    """One line per event, the short forms first."""
    at, name = _clock(event), str(event.get("event", ""))
    stage = str(event.get("stage") or "")
    if name == "item_done":
        seconds = event.get("seconds")
        took = f" ({seconds:.1f} s)" if isinstance(seconds, int | float) else ""
        return f"{at} {stage:<8} done {event.get('output', event.get('item'))}{took}"
    if name == "item_failed":
        return f"{at} {stage:<8} FAILED {event.get('item')}: {event.get('reason')}"
    if name == "daemon_started":
        stages = ", ".join(event.get("stages", []))
        return (
            f"{at} emif-daemon {event.get('version')} running ({stages}): "
            f"drop prompts files into {event.get('queue')}"
        )
    level = str(event.get("level", "info"))
    head = f"{at} {level.upper() + ' ' if level in ('warning', 'error') else ''}{name}"
    where = " ".join(str(event[k]) for k in ("stage", "item") if event.get(k))
    rest = " ".join(f"{k}={_short(v)}" for k, v in event.items() if k not in _SKIP)
    return " ".join(part for part in (head, where, rest) if part)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."
