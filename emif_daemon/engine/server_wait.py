"""How long `--once` waits for a server that does not answer before it gives up.

A daemon waits for its server for ever (it may be restarted in the morning); `emif run
--once` is a command someone waits on, so it gives up after `server.once_wait_s` and says
why, with its own outcome (`RunOutcome.SERVER_GAVE_UP`).
"""

from __future__ import annotations

import threading

from emif_daemon.engine.stage import Stage


class Patience:
    """Waits for a stage's server, bounded by `limit_s` (None: unbounded); `stop` ends
    every wait at once."""

    def __init__(self, stop: threading.Event, limit_s: float | None) -> None:
        self.stop = stop
        self.limit_s = limit_s
        self.gave_up = threading.Event()

    def wait(self, stage: Stage) -> bool:
        """Block until the stage can work again; False if the wait was given up."""
        if self.limit_s is None:
            stage.wait_available(self.stop)
            return True
        gate = threading.Event()
        deadline = threading.Timer(self.limit_s, gate.set)
        deadline.daemon = True
        watcher = threading.Thread(target=self._follow_stop, args=(gate,), daemon=True)
        deadline.start()
        watcher.start()
        try:
            stage.wait_available(gate)
        finally:
            timed_out = gate.is_set() and not self.stop.is_set()
            deadline.cancel()
            gate.set()  # ends the watcher
            deadline.join()
            watcher.join()
        if timed_out:
            self.gave_up.set()
        return not timed_out

    def _follow_stop(self, gate: threading.Event) -> None:
        while not gate.is_set():
            if self.stop.wait(0.1):
                gate.set()
