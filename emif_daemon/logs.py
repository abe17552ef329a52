"""The daemon's one logger, and lines for conditions that hold round after round.

structlog is configured once, by the CLI (observe/log_setup.py); everything else only asks
for the logger here.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

LOGGER_NAME = "emif"


def get_logger(**bound: Any) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(LOGGER_NAME, **bound)


class Repeats:
    """Lines for conditions that hold round after round (a full share, a failing chore):
    each is logged when it starts or changes, not every time."""

    def __init__(self, log: structlog.stdlib.BoundLogger) -> None:
        self.log = log
        self._said: dict[str, object] = {}
        self._lock = threading.Lock()

    def error(self, event: str, **fields: object) -> None:
        key = tuple(sorted(fields.items()))
        with self._lock:
            if self._said.get(event) == key:
                return
            self._said[event] = key
        self.log.error(event, **fields)
