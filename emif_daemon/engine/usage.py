"""What an item cost this process: CPU and wall time from its start (metrics, per item)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

_PROCESS = psutil.Process()


@dataclass(frozen=True)
class ResourceSample:
    """CPU time and wall time at the start of an item; psutil's first cpu_percent() is
    meaningless, so the average is computed from two readings of process CPU time."""

    wall: float
    cpu: float

    @classmethod
    def take(cls) -> ResourceSample:
        times = _PROCESS.cpu_times()
        return cls(time.monotonic(), times.user + times.system)

    def cpu_percent_since(self) -> tuple[float, float]:
        now = ResourceSample.take()
        wall = max(1e-9, now.wall - self.wall)
        return wall, 100.0 * (now.cpu - self.cpu) / wall
