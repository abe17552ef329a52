"""Discovery: periodic rescans are the truth, file events are only hints (SPEC §5).

Kernel file events do not carry other machines' writes on network volumes, and watchdog's
PollingObserver stops for good at its first OSError, so our own scanner does the rescans.
It re-lists only folders whose mtime changed (twice after each change, in case a file
arrived within the same mtime tick), which keeps a 100 000-image tree cheap to rescan.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .layout import is_ignored


class ShareUnavailable(OSError):
    """The folder cannot be read at all (a network share that dropped)."""


@dataclass
class _Dir:
    mtime_ns: int
    relist: bool
    files: frozenset[str]
    dirs: frozenset[str]


@dataclass
class TreeScanner:
    """Snapshot of the wanted files under `top` as relative POSIX paths."""

    top: Path
    want: Callable[[str], bool]
    scandir: Callable[[Any], Any] = os.scandir
    stat: Callable[[Any], os.stat_result] = os.stat
    want_dir: Callable[[str], bool] = lambda name: not is_ignored(name)
    report_dirs: bool = False  # also report folders (SEGMENTS/<dirs>/<stem>/ are outputs)
    _cache: dict[str, _Dir] = field(default_factory=dict)
    version: int = 0  # bumped whenever the result changes
    _seen: set[str] = field(default_factory=set)
    _found: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def scan(self, descend: Callable[[str], bool] | None = None) -> set[str]:
        """Wanted paths under `top`; folders for which `descend` is False are not entered.

        When no folder changed since the last scan, `version` stays the same, so callers
        can skip their own work. Safe to call from several workers of one stage.
        """
        with self._lock:
            return self._scan(descend)

    def _scan(self, descend: Callable[[str], bool] | None) -> set[str]:
        try:
            self.stat(self.top)
        except FileNotFoundError:
            if self._found or self._cache:
                self._cache.clear()
                self._seen, self._found = set(), set()
                self.version += 1
            return self._found
        except OSError as exc:
            raise ShareUnavailable(exc.errno, f"cannot read {self.top}: {exc.strerror}") from exc
        seen: set[str] = set()
        changed = self._walk("", seen, descend or (lambda _rel: True))
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        if changed or seen != self._seen:
            self._seen = seen
            self._found = self._collect(seen)
            self.version += 1
        return self._found

    def _collect(self, seen: set[str]) -> set[str]:
        found: set[str] = set()
        for rel in seen:
            cached = self._cache[rel]
            prefix = f"{rel}/" if rel else ""
            found.update(prefix + name for name in cached.files)
            if self.report_dirs:
                found.update(prefix + name for name in cached.dirs)
        return found

    def _walk(self, rel: str, seen: set[str], descend: Callable[[str], bool]) -> bool:
        """Stat every folder, re-list the ones that changed; True if any did."""
        path = self.top / rel if rel else self.top
        try:
            mtime = self.stat(path).st_mtime_ns
        except FileNotFoundError:
            return True
        seen.add(rel)
        cached = self._cache.get(rel)
        changed = cached is None or cached.mtime_ns != mtime
        if changed or cached.relist:  # type: ignore[union-attr]
            files, dirs = self._list(path)
            relisted = cached is None or (files, dirs) != (cached.files, cached.dirs)
            cached = _Dir(mtime, changed, files, dirs)
            self._cache[rel] = cached
            changed = relisted
        prefix = f"{rel}/" if rel else ""
        for name in cached.dirs:
            sub = prefix + name
            if descend(sub):
                changed = self._walk(sub, seen, descend) or changed
        return changed

    def _list(self, path: Path) -> tuple[frozenset[str], frozenset[str]]:
        files: list[str] = []
        dirs: list[str] = []
        try:
            with self.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if self.want_dir(entry.name):
                            dirs.append(entry.name)
                    elif self.want(entry.name):
                        files.append(entry.name)
        except FileNotFoundError:
            pass
        return frozenset(files), frozenset(dirs)


class Settler:
    """Decides when a file is complete enough to read (SPEC §3: settle time).

    Ready when its mtime is older than `settle_s` by the file server's clock, when its size
    and mtime have stayed the same for `settle_s` of our watching, or when it arrived by a
    rename (an event hint).
    """

    def __init__(self, settle_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settle_s = settle_s
        self.monotonic = monotonic
        self._seen: dict[str, tuple[int, int, float]] = {}
        self._arrived: set[str] = set()
        self._lock = threading.Lock()

    def arrived(self, path: str) -> None:
        with self._lock:
            self._arrived.add(path)

    def ready(self, path: Path, server_now: float) -> bool:
        key = str(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        with self._lock:
            if key in self._arrived:
                return True
            if server_now - st.st_mtime >= self.settle_s:
                self._seen.pop(key, None)
                return True
            sig = (st.st_size, st.st_mtime_ns)
            prev = self._seen.get(key)
            now = self.monotonic()
            if prev is None or prev[:2] != sig:
                self._seen[key] = (*sig, now)
                return self.settle_s == 0
            return now - prev[2] >= self.settle_s

    def forget(self, under: Path, keep: Iterable[str]) -> None:
        """Drop what we remember of files below `under` that are no longer candidates."""
        keep = set(keep)
        prefix = str(under) + os.sep
        with self._lock:
            self._seen = {
                k: v for k, v in self._seen.items() if k in keep or not k.startswith(prefix)
            }
            self._arrived = {k for k in self._arrived if k in keep or not k.startswith(prefix)}


class Hints:
    """watchdog's native observer on the input folders: wakes the stage that reads them.

    Only a hint: on a network volume it sees nothing of other hosts, so rescans go on.
    """

    def __init__(self, settler: Settler | None = None) -> None:
        self.settler = settler
        self._routes: list[tuple[Path, threading.Event]] = []
        self._observer: Any = None

    def route(self, folder: Path, wake: threading.Event) -> None:
        self._routes.append((folder, wake))

    def start(self) -> str | None:
        """Start watching; returns why file events are unavailable, or None."""
        from watchdog.events import FileSystemEventHandler  # noqa: PLC0415
        from watchdog.observers import Observer  # noqa: PLC0415

        hints = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                hints.notify(event)

        try:
            self._observer = Observer()
            for folder, _wake in self._routes:
                folder.mkdir(parents=True, exist_ok=True)
                self._observer.schedule(Handler(), str(folder), recursive=True)
            self._observer.daemon = True
            self._observer.start()
        except (OSError, RuntimeError) as exc:
            self._observer = None
            return str(exc)
        return None

    def notify(self, event: Any) -> None:
        target = getattr(event, "dest_path", "") or event.src_path
        target = os.fsdecode(target)
        if event.event_type == "moved" and self.settler is not None:
            self.settler.arrived(target)
        for folder, wake in self._routes:
            if target.startswith(str(folder)):
                wake.set()

    def stop(self) -> None:
        if self._observer is not None:
            with contextlib.suppress(RuntimeError):
                self._observer.stop()
                self._observer.join(timeout=2)
            self._observer = None
