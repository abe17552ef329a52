"""Discovery: periodic rescans are the truth, file events are only hints.

Kernel file events do not carry other machines' writes on network volumes, and watchdog's
PollingObserver stops for good at its first OSError, so our own scanner does the rescans.
It re-lists only folders whose mtime changed, and keeps re-listing a changed folder for a
while (`relist_s`: a Mac's SMB client serves listings from a cache for 30–60 s, and a file
can land in the same mtime tick as the last listing), plus a full re-list now and then;
a 100 000-image tree at rest costs one stat per folder. Names are reported in NFC, the one
form planned names use: the Mac's SMB client lists decomposed names
(docs/protocol.md#names).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emif_daemon.errors import ShareUnavailable
from emif_daemon.share.layout import is_ignored

# A folder that raises these was removed or replaced by a file after its parent was listed:
# a race, not a fault; the parent's next listing shows what is there now.
_GONE = (FileNotFoundError, NotADirectoryError)


def _everywhere(_rel: str) -> bool:
    return True


FULL_RELIST_S = 600.0  # every folder is listed again this often, changed or not


def nfc(name: str) -> str:
    return name if unicodedata.is_normalized("NFC", name) else unicodedata.normalize("NFC", name)


@dataclass
class _Dir:
    mtime_ns: int
    changed_at: float  # monotonic time its mtime or listing last changed
    listed_at: float
    confirmed: bool  # listed again since that change, and found the same
    files: frozenset[str]
    dirs: frozenset[str]


@dataclass
class TreeScanner:
    """Snapshot of the wanted files under `top` as relative POSIX paths.

    A sub-folder that cannot be read is left out (with its previous contents) rather than
    failing the scan, so one bad folder on a share does not stop the whole stage; it is
    listed in `unreadable` and passed once to `on_unreadable` until it can be read again.
    """

    top: Path
    want: Callable[[str], bool]
    scandir: Callable[[Any], Any] = os.scandir
    stat: Callable[[Any], os.stat_result] = os.stat
    want_dir: Callable[[str], bool] = lambda name: not is_ignored(name)
    report_dirs: bool = False  # also report folders (SEGMENTS/<dirs>/<stem>/ are outputs)
    on_unreadable: Callable[[Path, OSError], None] | None = None
    relist_s: float = 0.0  # keep re-listing a changed folder this long (0: once more)
    monotonic: Callable[[], float] = time.monotonic
    unreadable: dict[str, str] = field(default_factory=dict)  # relative path -> error text
    _actual: dict[str, str] = field(default_factory=dict)  # NFC path -> path as on disk
    _cache: dict[str, _Dir] = field(default_factory=dict)
    version: int = 0  # bumped whenever the result changes
    _seen: set[str] = field(default_factory=set)
    _found: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def scan(self, descend: Callable[[str], bool] | None = None) -> set[str]:
        """Wanted paths under `top`; folders for which `descend` is False are not entered.

        When no folder changed since the last scan, `version` stays the same, so callers
        can skip their own work. Safe to call from several workers of one stage.
        Raises ShareUnavailable only when `top` itself cannot be read; a missing `top` is
        an empty tree.
        """
        with self._lock:
            found, newly_unreadable = self._scan(descend or _everywhere)
        # Outside the lock: the callback logs, and must not hold up the stage's other workers.
        if self.on_unreadable is not None:
            for path, exc in newly_unreadable:
                self.on_unreadable(path, exc)
        return found

    def _scan(self, descend: Callable[[str], bool]) -> tuple[set[str], list[tuple[Path, OSError]]]:
        # Iterative (an explicit stack): a deep tree must not hit Python's recursion limit.
        seen: set[str] = set()
        failed: dict[str, OSError] = {}
        changed = False
        stack = [""]
        while stack:
            rel = stack.pop()
            path = self.top / rel if rel else self.top
            try:
                cached, relisted = self._visit(rel, path)
            except OSError as exc:
                if not rel and not isinstance(exc, FileNotFoundError):  # a missing top is empty
                    reason = exc.strerror or str(exc)
                    raise ShareUnavailable(exc.errno, f"cannot read {self.top}: {reason}") from exc
                if not isinstance(exc, _GONE):
                    failed[rel] = exc
                continue  # its cached contents are dropped below, as for any folder not seen
            seen.add(rel)
            changed = changed or relisted
            prefix = f"{rel}/" if rel else ""
            stack.extend(sub for name in cached.dirs if descend(sub := prefix + name))
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        if changed or seen != self._seen:
            self._seen = seen
            found = self._collect(seen)
            if found != self._found:  # a listing can change (a folder went) with the same result
                self._found = found
                self.version += 1
        newly = [(self.top / rel, exc) for rel, exc in failed.items() if rel not in self.unreadable]
        self.unreadable = {rel: str(exc) for rel, exc in failed.items()}
        return self._found, newly

    def actual(self, rel: str) -> str:
        """The path as it is on disk of a reported (NFC) path: what to open."""
        return self._actual.get(rel, rel)

    def _collect(self, seen: set[str]) -> set[str]:
        """Reported paths in NFC; those spelled otherwise on disk are remembered."""
        actual: dict[str, str] = {}
        for rel in seen:
            cached = self._cache[rel]
            prefix = f"{rel}/" if rel else ""
            names = cached.files | cached.dirs if self.report_dirs else cached.files
            for name in names:
                raw = prefix + name
                key = nfc(raw)
                if key != raw:
                    actual[key] = raw
                else:
                    actual.setdefault(key, raw)
        self._actual = {k: v for k, v in actual.items() if k != v}
        return set(actual)

    def _visit(self, rel: str, path: Path) -> tuple[_Dir, bool]:
        """Stat one folder and re-list it if it changed (or changed on the previous scan);
        True if its listing differs from the cached one."""
        mtime = self.stat(path).st_mtime_ns
        now = self.monotonic()
        cached = self._cache.get(rel)
        if cached is not None and cached.mtime_ns == mtime and not self._due(cached, now):
            return cached, False
        files, dirs = self._list(path)
        relisted = cached is None or (files, dirs) != (cached.files, cached.dirs)
        changed = relisted or cached is None or cached.mtime_ns != mtime
        changed_at = now if changed else cached.changed_at  # type: ignore[union-attr]
        self._cache[rel] = _Dir(mtime, changed_at, now, not changed, files, dirs)
        return self._cache[rel], relisted

    def _due(self, cached: _Dir, now: float) -> bool:
        """An unchanged folder is listed again while a listing cache may still be hiding
        a change — at least once after each change, on every scan for `relist_s` after it,
        and once more after that window (a listing fetched just before it closed may have
        come from the cache) — and every FULL_RELIST_S."""
        if not cached.confirmed:  # the change has not been re-listed yet
            return True
        since = now - cached.changed_at
        if since < self.relist_s:
            return True
        if cached.listed_at - cached.changed_at < self.relist_s:  # the one after the window
            return True
        return now - cached.listed_at > FULL_RELIST_S

    def _list(self, path: Path) -> tuple[frozenset[str], frozenset[str]]:
        """Sub-folders and wanted regular files; symlinks, FIFOs, sockets and devices are
        neither followed nor reported (reading a FIFO would block a worker)."""
        files: list[str] = []
        dirs: list[str] = []
        with self.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if self.want_dir(entry.name):
                        dirs.append(entry.name)
                elif entry.is_file(follow_symlinks=False) and self.want(entry.name):
                    files.append(entry.name)
        return frozenset(files), frozenset(dirs)


class Settler:
    """Decides when a file is complete enough to read (docs/architecture.md#the-data-path).

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
