"""Per-host metrics: one CSV row per finished item (docs/protocol.md#the-root)."""

from __future__ import annotations

import csv
import io
import os
import threading
from pathlib import Path
from typing import Any

import psutil

from emif_daemon.engine.usage import ResourceSample
from emif_daemon.share.clock import utc_stamp

COLUMNS = (
    "finished_at",
    "item",
    "seconds",
    "server_seconds",
    "cpu_percent",
    "rss_mb",
    "ram_used_mb",
    "status",
)

_PROCESS = psutil.Process()


class MetricsWriter:
    """Appends rows to ``metrics/<host>/<stage>.csv``; this host is the only writer."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()

    def write(
        self, stage: str, item: str, status: str, sample: ResourceSample, record: dict[str, Any]
    ) -> None:
        wall, cpu = sample.cpu_percent_since()
        row = {
            "finished_at": utc_stamp(),
            "item": item,
            "seconds": f"{wall:.3f}",
            "server_seconds": f"{float(record.get('server_seconds', 0.0)):.3f}",
            "cpu_percent": f"{cpu:.1f}",
            "rss_mb": f"{_PROCESS.memory_info().rss / 2**20:.1f}",
            "ram_used_mb": f"{psutil.virtual_memory().used / 2**20:.1f}",
            "status": status,
        }
        path = self.folder / f"{stage}.csv"
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            new = not path.exists()
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
            # One write per row, so a crash leaves whole lines only.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, buf.getvalue().encode())
            finally:
                os.close(fd)


def read_rows(metrics_root: Path) -> list[dict[str, str]]:
    """Every row of every host's metrics, with `host` and `stage` added."""
    rows: list[dict[str, str]] = []
    for path in sorted(metrics_root.glob("*/*.csv")):
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                rows.append({**row, "host": path.parent.name, "stage": path.stem})
    return rows
