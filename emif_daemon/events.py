"""Where events for people go: the webhook, the banner and the gallery refresher listen.

A stage, the intake and the batch summaries hand events to an `EventSink`; the daemon's
wiring fans them out to its listeners (docs/architecture.md#wiring).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

EventSink = Callable[[str, Mapping[str, Any]], None]


def no_events(_event: str, _data: Mapping[str, Any]) -> None:
    """An event sink that drops everything (tests, read-only tools)."""
