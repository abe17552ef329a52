"""Keep a Mac awake while items are in flight: `caffeinate -i -w <pid>`.

(docs/architecture.md#threads)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from emif_daemon.logs import get_logger


class SleepGuard:
    """Holds caffeinate while busy, drops it when idle; does nothing off macOS.

    `-w <pid>` ties the assertion to our process, so it ends even if we are killed.
    """

    def __init__(self, enabled: bool, platform: str = sys.platform) -> None:
        self.enabled = enabled and platform == "darwin" and shutil.which("caffeinate") is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = get_logger()

    def busy(self, busy: bool) -> None:
        if not self.enabled:
            return
        if busy and self._proc is None:
            self._proc = subprocess.Popen(["caffeinate", "-i", "-w", str(os.getpid())])
            self.log.info("sleep_prevented")
        elif not busy and self._proc is not None:
            self.release()
            self.log.info("sleep_allowed")

    def release(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)
            self._proc = None
