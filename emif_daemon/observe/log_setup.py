"""Structured logs: one JSON object per line to the per-host file, readable on a terminal.

structlog is configured once, by the CLI, through ``configure_logging``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from emif_daemon.logs import LOGGER_NAME
from emif_daemon.observe.progress_bars import TqdmHandler
from emif_daemon.observe.terminal import QuietFilter, render


def _add_host(host: str) -> Processor:
    def add_host(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        event.setdefault("host", host)
        return event

    return add_host


def configure_logging(
    *,
    host: str,
    level: str = "info",
    file: Path | None = None,
    stderr: bool = True,
    bars: bool = False,
) -> None:
    """JSON lines to `file`; to stderr as JSON, or as coloured lines when it is a terminal."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_host(host),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    json_formatter = structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        foreign_pre_chain=shared,
    )
    root = logging.getLogger(LOGGER_NAME)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level.upper())
    root.propagate = False
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
        handler.setFormatter(json_formatter)
        root.addHandler(handler)
    if stderr:
        console: logging.Handler = logging.StreamHandler(sys.stderr)
        if bars:
            console = TqdmHandler(sys.stderr)
        if sys.stderr.isatty():
            console.setFormatter(
                structlog.stdlib.ProcessorFormatter(
                    processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, render],
                    foreign_pre_chain=shared,
                )
            )
            console.addFilter(QuietFilter(debug=level.lower() == "debug"))
        else:
            console.setFormatter(json_formatter)
        root.addHandler(console)
