"""What the engine tells the rest of the daemon: a list of side jobs, each on its own.

Metrics, notifications, the sleep guard, the host report, the pause gate and the orphan
sweep are side jobs (after dramatiq's middleware list): each is a `Hook` that overrides only
what it needs. A failure in one must never kill a worker or the heartbeat thread (which would
let other hosts break our live claims and redo the work), nor keep the others from running,
so the engine calls them only through `Hooks`, which guards each call of each hook.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from emif_daemon.engine.outcomes import ItemOutcome
from emif_daemon.engine.stage import StageResult
from emif_daemon.engine.usage import ResourceSample
from emif_daemon.logs import get_logger
from emif_daemon.share.host_reports import HostState


class Hook:
    """One side job; override what it needs, every default does nothing."""

    def may_claim(self) -> bool:
        """False while this host must not take new items (paused, the share away)."""
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


class Hooks:
    """Every hook, called in order, each call guarded on its own: an exception is logged as
    `hook_failed` (once per hook, method and error, then `hook_recovered`) and the other
    hooks and the engine go on."""

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self.hooks = list(hooks)
        self.log = get_logger()
        self._failing: dict[tuple[int, str], str] = {}
        self._lock = threading.Lock()

    def _each(self, method: str, call: Callable[[Hook], object]) -> list[object]:
        """`call` on every hook; a hook that raises gives None."""
        return [self._guarded(hook, method, call) for hook in self.hooks]

    def _guarded(self, hook: Hook, method: str, call: Callable[[Hook], object]) -> object:
        key = (id(hook), method)
        try:
            value = call(hook)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                known = self._failing.get(key) == error
                self._failing[key] = error
            if not known:
                self.log.error(
                    "hook_failed",
                    hook=method,
                    job=type(hook).__name__,
                    error=error,
                    traceback=traceback.format_exc(),
                )
            return None
        if key in self._failing:
            with self._lock:
                self._failing.pop(key, None)
            self.log.info("hook_recovered", hook=method, job=type(hook).__name__)
        return value

    def may_claim(self) -> bool:
        """True only if every hook says yes; one that cannot tell (it raised) means no, and
        the first no ends the asking."""
        return all(
            self._guarded(hook, "may_claim", lambda h: h.may_claim()) is True for hook in self.hooks
        )

    def on_event(self, event: str, data: Mapping[str, Any]) -> None:
        self._each("on_event", lambda h: h.on_event(event, data))

    def item_finished(
        self,
        stage: str,
        item: str,
        outcome: ItemOutcome,
        sample: ResourceSample,
        result: StageResult | None,
    ) -> None:
        self._each("item_finished", lambda h: h.item_finished(stage, item, outcome, sample, result))

    def busy(self, busy: bool) -> None:
        self._each("busy", lambda h: h.busy(busy))

    def report(self, state: HostState) -> None:
        self._each("report", lambda h: h.report(state))

    def sweep(self, folders: Sequence[Path] | None = None) -> None:
        self._each("sweep", lambda h: h.sweep(folders))

    def chore(self) -> None:
        self._each("chore", lambda h: h.chore())
