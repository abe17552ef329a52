"""Keeping the gallery fresh: the daemon's refresher thread, and `emif gallery`'s locked build.

The daemon hands every event to `GalleryRefresher` (it is one of the event sink's listeners).
A finished batch (`batch_done`) marks the groups of its prompts file; each finished or failed
item marks its own group, so upscales and cut-outs made later, or by another host, reach the
pages too. The sink call only notes the group and returns: the refresh runs on the
refresher's own thread, gathers a burst of events into one build, and runs at most once per
`min_interval_s`, so the stages never wait for a thumbnail. A build holds the gallery lock
(hostlock.py), so when several Macs finish at once one builds and the others try again later.
At shutdown the pending groups get one last build, bounded by `final_s`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from emif_daemon.dataset.catalog import group_of
from emif_daemon.dataset.gallery import BuildReport, build_gallery
from emif_daemon.errors import LockBusy
from emif_daemon.intake.plans import read_plan
from emif_daemon.logs import get_logger
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import Layout
from emif_daemon.share.locks import HostLock
from emif_daemon.share.root_marker import root_problem

LOCK_NAME = "gallery.lock"
SETTLE_S = 2.0  # events of one burst (a batch ending, several items) make one build
MIN_INTERVAL_S = 30.0  # at most one build this often while the stages work
RETRY_S = 5.0  # the lock was busy, or the build failed: try again this much later
# The last build at shutdown, within the 10 s a stop may take; what it cannot finish (or finds
# another host building), the next build does.
FINAL_S = 2.0
BEAT_S = 5.0  # rewrite the lock this often while building

Build = Callable[..., BuildReport]


def gallery_lock(
    layout: Layout, clock: ServerClock, identity: HostIdentity, stale_s: float
) -> HostLock:
    beat_s = min(BEAT_S, stale_s / 4)
    return HostLock(layout.state / LOCK_NAME, clock, identity, stale_s=stale_s, beat_s=beat_s)


def build_with_lock(
    layout: Layout,
    clock: ServerClock,
    identity: HostIdentity,
    *,
    stale_s: float,
    wait_s: float,
    force: bool = False,
    build: Build = build_gallery,
) -> BuildReport:
    """`emif gallery`: the whole gallery, under the lock; waits up to `wait_s` for it."""
    lock = gallery_lock(layout, clock, identity, stale_s)
    deadline = time.monotonic() + wait_s
    while not lock.acquire():
        if time.monotonic() >= deadline:
            raise LockBusy(lock.path, lock.holder())
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    try:
        return build(
            layout,
            force=force,
            host=identity.host,
            should_stop=lambda: not lock.held,  # taken over while we were paused: stop
            beat=lock.heartbeat,
        )
    finally:
        lock.release()


def groups_of_batch(layout: Layout, name: str) -> set[str]:
    """The groups of a finished prompts file, from its plan (empty if it cannot be read)."""
    plan = read_plan(layout, name)
    if plan is None:
        return set()
    return {f"{job.nation}/{job.category}" for job in plan.jobs}


class GalleryRefresher:
    """The daemon's listener that refreshes the pages its finished work touched."""

    def __init__(
        self,
        layout: Layout,
        clock: ServerClock,
        identity: HostIdentity,
        *,
        stale_s: float,
        settle_s: float = SETTLE_S,
        min_interval_s: float = MIN_INTERVAL_S,
        retry_s: float = RETRY_S,
        final_s: float = FINAL_S,
        build: Build = build_gallery,
    ) -> None:
        self.layout = layout
        self.lock = gallery_lock(layout, clock, identity, stale_s)
        self.host = identity.host
        self.settle_s = settle_s
        self.min_interval_s = min_interval_s
        self.retry_s = retry_s
        self.final_s = final_s
        self.build = build
        self.log = get_logger()
        self._mutex = threading.Lock()
        self._batches: list[str] = []
        self._groups: set[str] = set()  # marked by events since the last build began
        self._pending: set[str] = set()  # taken for a build that has not succeeded yet
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last = float("-inf")
        self.builds = 0
        self._thread = threading.Thread(target=self._run, name="gallery", daemon=True)

    def __call__(self, event: str, data: Mapping[str, Any]) -> None:
        """The event sink: note what changed and return at once (called from stage threads)."""
        if event == "batch_done":
            with self._mutex:
                self._batches.append(str(data.get("file", "")))
        elif event in ("item_done", "item_failed") and isinstance(data.get("item"), str):
            with self._mutex:
                self._groups.add(group_of(data["item"]))
        else:
            return
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop: the thread makes one last build of what is pending (at most `final_s`)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(self.final_s + 10.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            # Gather the burst, and keep to one build per min_interval_s.
            wait = max(self.settle_s, self._last + self.min_interval_s - time.monotonic())
            if self._stop.wait(wait):
                break
            self._wake.clear()
            if not self._refresh(self._stop.is_set):
                self._stop.wait(self.retry_s)
                self._wake.set()
        deadline = time.monotonic() + self.final_s
        self._refresh(lambda: time.monotonic() > deadline)

    def _take(self) -> set[str]:
        """Every group to build now: those marked since the last build, and those a build
        that failed or was cut short left pending."""
        with self._mutex:
            batches, self._batches = self._batches, []
            marked, self._groups = self._groups, set()
        self._pending |= marked
        for name in batches:
            self._pending |= groups_of_batch(self.layout, name)
        return set(self._pending)

    def _refresh(self, should_stop: Callable[[], bool]) -> bool:
        """One build of the marked groups; False to try again later (lock busy, failure)."""
        groups = self._take()
        if not groups:
            return True
        if root_problem(self.layout) is not None:
            return False  # the share is away: never build where it should be mounted
        try:
            if not self.lock.acquire():
                self.log.info("gallery_busy", holder=(self.lock.holder() or {}).get("host"))
                return False
            try:
                report = self._build(groups, should_stop)
            finally:
                self.lock.release()
        except Exception as exc:  # a failing build must never end the thread; it is retried
            self.log.error("gallery_failed", error=repr(exc), groups=len(groups))
            self._last = time.monotonic()
            return False
        self._last = time.monotonic()
        if not report.interrupted:
            self._pending.clear()
        return True

    def _build(self, groups: Iterable[str], should_stop: Callable[[], bool]) -> BuildReport:
        report = self.build(
            self.layout,
            groups=sorted(groups),
            host=self.host,
            should_stop=lambda: should_stop() or not self.lock.held,
            beat=self.lock.heartbeat,
        )
        self.builds += 1
        self.log.info(
            "gallery_refreshed",
            groups=report.groups,
            pages=report.pages_written,
            thumbnails=report.thumbnails_made,
            seconds=report.seconds,
            interrupted=report.interrupted,
        )
        return report
