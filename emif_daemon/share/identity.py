"""Who this daemon is on a shared root (docs/protocol.md#identity).

Two names with two jobs. ``host`` (``coordination.host_id``, else the short hostname) is for
people: logs, claims, host reports, metrics folders. ``machine`` is a short tag derived from
this boot of this machine; a pid is only meaningful where the tag matches, so only it may
decide "that process is gone" and which temp files are ours. Two Macs configured with the
same host id, or sharing a short hostname, never mistake each other's live work for dead.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psutil

MACHINE_TAG_CHARS = 12  # hex: short enough for name limits, far from colliding on a farm
_LINUX_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def short_hostname() -> str:
    return socket.gethostname().split(".")[0] or "host"


def _boot_identity() -> str:
    """Something unique to this boot of this machine, by the best source the OS offers."""
    if sys.platform.startswith("linux"):
        try:
            return _LINUX_BOOT_ID.read_text().strip()
        except OSError:
            pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "kern.bootsessionuuid"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return f"{socket.gethostname()}:{psutil.boot_time():.0f}"


@cache
def machine_tag() -> str:
    """This boot's tag: the same in every process of this machine until it reboots."""
    digest = hashlib.sha256(_boot_identity().encode()).hexdigest()
    return digest[:MACHINE_TAG_CHARS]


def process_start(pid: int) -> float | None:
    """When `pid` started, or None if there is no such process (guards against pid reuse)."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


@dataclass(frozen=True)
class HostIdentity:
    host: str
    machine: str
    pid: int
    pid_start: float | None

    @classmethod
    def current(cls, host_id: str = "") -> HostIdentity:
        pid = os.getpid()
        return cls(host_id or short_hostname(), machine_tag(), pid, process_start(pid))

    def process_gone(self, machine: object, pid: object, pid_start: object) -> bool:
        """True only when `pid` ran on this very machine and is no longer that process."""
        if machine != self.machine or not isinstance(pid, int) or isinstance(pid, bool):
            return False
        start = process_start(pid)
        if start is None:
            return True
        return isinstance(pid_start, int | float) and abs(start - pid_start) > 1.0
