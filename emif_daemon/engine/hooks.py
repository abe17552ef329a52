"""What the engine tells the rest of the daemon, as one object with no-op defaults.

Metrics, notifications, the sleep guard, the host report, the pause gate and the orphan
sweep are side jobs: a failure in one of them must never kill a worker or the heartbeat
thread (which would let other hosts break our live claims and redo the work). The engine
therefore only ever calls hooks through `GuardedHooks`.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from emif_daemon.engine.outcomes import ItemOutcome
from emif_daemon.engine.stage import StageResult
from emif_daemon.engine.usage import ResourceSample
from emif_daemon.logs import get_logger
from emif_daemon.share.host_reports import HostState

T = TypeVar("T")


class EngineHooks:
    """Override what a daemon needs; every default does nothing."""

    def may_claim(self) -> bool:
        """False while this host must not take new items (paused)."""
        return True

    def on_event(self, event: str, data: Mapping[str, Any]) -> None:
        """An event for listeners (webhook, banner): item_done, item_failed, …"""

    def item_finished(
        self,
        stage: str,
        item: str,
        outcome: ItemOutcome,
        sample: ResourceSample,
        result: StageResult | None,
    ) -> None:
        """An item was done or failed (metrics)."""

    def busy(self, busy: bool) -> None:
        """Whether items are in hand (keeps a Mac awake)."""

    def report(self, state: HostState) -> None:
        """Publish this host's state for `emif status`."""

    def sweep(self, folders: Sequence[Path] | None = None) -> None:
        """Remove temp files of dead writers: in `folders` (where a dead owner was
        writing), or wherever they can be."""

    def chore(self) -> None:
        """Anything the daemon does now and then (the keeper calls it each tick)."""


class GuardedHooks(EngineHooks):
    """Calls the inner hooks; an exception is logged as `hook_failed` (once per hook until
    it works again) and the engine goes on."""

    def __init__(self, inner: EngineHooks) -> None:
        self.inner = inner
        self.log = get_logger()
        self._failing: dict[str, str] = {}
        self._lock = threading.Lock()

    def _call(self, name: str, default: T, call: Callable[[], T]) -> T:
        try:
            value = call()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                known = self._failing.get(name) == error
                self._failing[name] = error
            if not known:
                self.log.error(
                    "hook_failed", hook=name, error=error, traceback=traceback.format_exc()
                )
            return default
        if name in self._failing:
            with self._lock:
                self._failing.pop(name, None)
            self.log.info("hook_recovered", hook=name)
        return value

    def may_claim(self) -> bool:
        # Cannot tell whether we are paused: do not take new work.
        return self._call("may_claim", False, self.inner.may_claim)

    def on_event(self, event: str, data: Mapping[str, Any]) -> None:
        self._call("on_event", None, lambda: self.inner.on_event(event, data))

    def item_finished(
        self,
        stage: str,
        item: str,
        outcome: ItemOutcome,
        sample: ResourceSample,
        result: StageResult | None,
    ) -> None:
        self._call(
            "item_finished",
            None,
            lambda: self.inner.item_finished(stage, item, outcome, sample, result),
        )

    def busy(self, busy: bool) -> None:
        self._call("busy", None, lambda: self.inner.busy(busy))

    def report(self, state: HostState) -> None:
        self._call("report", None, lambda: self.inner.report(state))

    def sweep(self, folders: Sequence[Path] | None = None) -> None:
        self._call("sweep", None, lambda: self.inner.sweep(folders))

    def chore(self) -> None:
        self._call("chore", None, self.inner.chore)
