"""Which image indices a prompts file gets: decided by the file server, never by a listing
(docs/protocol.md#index-reservations).

Index i of a nation/category is taken by creating the marker
`.emif/indices/<nation>/<category>/<i // 1000>/<i>` with O_CREAT|O_EXCL. On SMB that is a
CREATE the server refuses when the name exists, and a Mac sends it to the server whatever
its cached listing says, so of two hosts that want index i exactly one gets it. A marker is
empty and never rewritten. One that a published plan names is never removed; a host whose
planning comes to nothing (the file is refused, or the batch was planned by another host
first) removes the markers it made, and a host killed while planning leaves them: a gap in
the numbering, never a shared name. The marker folders are named by the case-folded NFC form
of the nation and category (`share.names.key_component`), so `Italy` and `italy`, one folder
on a Mac, share one sequence on every server.

Where to start is only a hint: after the highest index planned (the plans this host has
listed) or present (the PNGs it has listed), and after the `next` hint the last allocation of
that folder wrote. A stale hint costs refused creates, never a shared name. An image found at
a reserved name afterwards (a user's PNG the listing missed, or one from a plan made before
markers existed) is never taken for the batch's own: open_items.py fails that item, saying
whose it is.

The first file of a nation/category fixes its spelling: `spelling` records beside the markers,
each published whole by a no-replace rename, refuse a file that spells it otherwise.

The intake lock (`.emif/intake.lock`, created exclusively, broken after a minute once its
owner is gone) makes hosts plan one file at a time, so one host does the work and plans are
published in turn. No index decision rests on it.
"""

from __future__ import annotations

import contextlib
import os
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emif_daemon.intake.plans import Plan
from emif_daemon.share.atomic import atomic_write, make_dirs, publish_new, read_regular
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import Layout
from emif_daemon.share.locks import HostLock
from emif_daemon.share.names import key_component, name_key

LOCK_STALE_S = 60.0  # held while one file is planned; heartbeats keep a long planning alive
BUCKET = 1000  # markers per sub-folder: a server looks names up in small folders
BEAT_EVERY = 200  # creates between two heartbeats of the intake lock

Folder = tuple[str, str]  # (nation, category) as the file spells them


def folder_key(nation: str, category: str) -> Folder:
    """The one form two spellings of a folder are compared in."""
    return name_key(nation), name_key(category)


def markers_dir(layout: Layout, nation: str, category: str) -> Path:
    return layout.indices / key_component(nation) / key_component(category)


# -- what the listings say: hints, and names for messages ----------------------------------


@dataclass
class FolderUse:
    """What this host knows to use indices of one nation/category (a hint)."""

    highest: int = 0
    planned: list[tuple[int, int, str, str]] = field(
        default_factory=list
    )  # first, last, file, prompt
    present: dict[int, str] = field(default_factory=dict)  # index → a file name on disk
    spelled: str | None = None  # "Nation/category" as a plan or a folder spells it


def index_use(layout: Layout, folders: set[Folder], plans: list[Plan]) -> dict[Folder, FolderUse]:
    """Indices used in `folders` (any spelling) by `plans` and by the PNGs listed there."""
    use = {folder_key(*f): FolderUse() for f in folders}
    for plan in plans:
        for job in plan.jobs:
            u = use.get(folder_key(job.nation, job.category))
            if u is not None:
                last = job.first + job.count - 1
                u.planned.append((job.first, last, plan.source, job.prompt))
                u.highest = max(u.highest, last)
                u.spelled = u.spelled or f"{job.nation}/{job.category}"
    for (nation, category), u in use.items():
        pattern = re.compile(rf"{re.escape(nation)}_{re.escape(category)}_(\d+)_\d+\.png")
        for name in _pngs(layout.generations, nation, category):
            found = pattern.fullmatch(name_key(name))
            if found:
                index = int(found.group(1))
                u.present.setdefault(index, name)
                u.highest = max(u.highest, index)
    return use


def _pngs(top: Path, nation_key: str, category_key: str) -> Iterator[str]:
    """Names in GENERATIONS/<nation>/<category> (any spelling of both), in NFC."""
    for folder in _matching(top, nation_key):
        for sub in _matching(folder, category_key):
            with contextlib.suppress(OSError):
                for entry in os.scandir(sub):
                    yield unicodedata.normalize("NFC", entry.name)


def _matching(top: Path, key: str) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(top) if name_key(e.name) == key and e.is_dir()]
    except OSError:
        return []


def overlap_problems(plan: Plan, use: dict[Folder, FolderUse]) -> list[str]:
    """An explicit `start_index` over images or plans this host knows of, named."""
    problems = []
    for job in plan.jobs:
        u = use.get(folder_key(job.nation, job.category))
        if u is None:
            continue
        last = job.first + job.count - 1
        existing = sorted(i for i in u.present if job.first <= i <= last)
        if existing:
            names = ", ".join(u.present[i] for i in existing[:3])
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            prompt = next((p for a, b, _f, p in u.planned if a <= existing[0] <= b), None)
            made = f", made from the prompt {prompt!r}" if prompt else ""
            problems.append(
                f"{job.loc}.start_index: indices {job.first}…{last} of {job.nation}/"
                f"{job.category} would reuse the names of existing images ({names}{more}{made}); "
                f"leave start_index out to continue after {u.highest}"
            )
            continue
        for a, b, source, prompt in u.planned:
            if job.first <= b and a <= last:
                problems.append(
                    f"{job.loc}.start_index: indices {job.first}…{last} of {job.nation}/"
                    f"{job.category} are planned already by {source} ({a}…{b}, prompt "
                    f"{prompt!r}); leave start_index out to continue after {u.highest}"
                )
                break
    return problems


# -- what the server decides --------------------------------------------------------------


class Reservations:
    """Index markers and spelling records one planning makes, through exclusive creates.

    `dry=True` (for `emif plan`) creates nothing: it answers from what exists now.
    `release()` removes what this planning made, when its plan is not published.
    """

    def __init__(
        self, layout: Layout, beat: Callable[[], None] = lambda: None, *, dry: bool = False
    ):
        self.layout = layout
        self.beat = beat
        self.dry = dry
        self.made: list[Path] = []
        self.refused = 0  # creates the server refused: indices another file had taken
        self._creates = 0

    def _create(self, path: Path) -> bool:
        """Create `path` exclusively; True if this call made it (the server said so)."""
        self._creates += 1
        if self._creates % BEAT_EVERY == 0:
            self.beat()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            make_dirs(path.parent)
            try:
                fd = os.open(path, flags, 0o644)
            except FileExistsError:
                self.refused += 1
                return False
        except FileExistsError:
            self.refused += 1
            return False
        os.close(fd)
        self.made.append(path)
        return True

    def _marker(self, folder: Path, index: int) -> Path:
        return folder / str(index // BUCKET) / str(index)

    def run(self, nation: str, category: str, start: int, count: int) -> int:
        """`count` consecutive free indices from `start` on; returns the first."""
        folder = markers_dir(self.layout, nation, category)
        first = max(start, _read_hint(folder))
        if self.dry:
            return first
        got: list[Path] = []
        index = first
        while len(got) < count:
            marker = self._marker(folder, index)
            if self._create(marker):
                got.append(marker)
                index += 1
                continue
            self._give_back(got)  # taken: another file's; start again after it
            got = []
            index = max(index + 1, _read_hint(folder))
            first = index
        _write_hint(folder, first + count)
        return first

    def exact(self, nation: str, category: str, first: int, count: int) -> list[int]:
        """Reserve exactly first…first+count-1; the indices that were taken already."""
        folder = markers_dir(self.layout, nation, category)
        taken = []
        for index in range(first, first + count):
            marker = self._marker(folder, index)
            if self.dry:
                if marker.exists():
                    taken.append(index)
            elif not self._create(marker):
                taken.append(index)
        if not self.dry:
            _write_hint(folder, first + count)
        return taken

    def spelling(self, nation: str, category: str, loc: str) -> list[str]:
        """Problems if earlier files spelled this nation or category otherwise; the first
        file to use them records its spelling."""
        problems = []
        nation_dir = self.layout.indices / key_component(nation)
        for what, record, want in (
            ("nation", nation_dir / "spelling", nation),
            ("category", markers_dir(self.layout, nation, category) / "spelling", category),
        ):
            have = self._spelled(record, want)
            if have is not None and have != want:
                problems.append(
                    f"{loc}.{what}: {want!r} differs only in case or accents' encoding from "
                    f"{have!r}, as earlier files spell it (one folder on a Mac); write {have!r}"
                )
        return problems

    def _spelled(self, record: Path, want: str) -> str | None:
        """The recorded spelling; ours once we are the first (None: none yet, dry)."""
        with contextlib.suppress(FileNotFoundError):
            return _read_spelling(record)
        if self.dry:
            return None
        try:
            publish_new(record, want.encode())
        except FileExistsError:
            return _read_spelling(record)
        self.made.append(record)
        return want

    def _give_back(self, markers: list[Path]) -> None:
        for marker in markers:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
            self.made.remove(marker)

    def release(self) -> None:
        """Remove every marker and record this planning made: its plan was not published."""
        self._give_back(list(self.made))

    def keep(self) -> None:
        """The plan is published: what was made stays for good."""
        self.made.clear()


def _read_spelling(record: Path) -> str:
    return unicodedata.normalize("NFC", read_regular(record, 4096).decode(errors="replace"))


def _read_hint(folder: Path) -> int:
    """Where the last allocation of this folder ended (a hint; 0 if unknown)."""
    try:
        text = read_regular(folder / "next", 64).decode().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def _write_hint(folder: Path, next_index: int) -> None:
    if next_index <= _read_hint(folder):
        return
    with contextlib.suppress(OSError):  # a hint: a lost write costs refused creates only
        atomic_write(folder / "next", f"{next_index}\n".encode())


# -- the intake lock ------------------------------------------------------------------------


class LockHeld:
    """The intake lock while held: `beat()` keeps a long planning's lock from going stale."""

    def __init__(self, lock: HostLock | None = None) -> None:
        self.lock = lock

    def __bool__(self) -> bool:
        return True

    def beat(self) -> None:
        if self.lock is not None:
            self.lock.heartbeat()


def beat_of(held: Any) -> Callable[[], None]:
    """The heartbeat of what a lock context yielded (a test's lock may yield a plain bool)."""
    beat = getattr(held, "beat", None)
    return beat if callable(beat) else (lambda: None)


@contextlib.contextmanager
def intake_lock(
    layout: Layout, clock: ServerClock, identity: HostIdentity, stale_s: float = LOCK_STALE_S
) -> Iterator[LockHeld | None]:
    """Hold the share's intake lock while the body runs; yields None (without it) when
    another live host holds it: try again next round."""
    lock = HostLock(
        layout.state / "intake.lock", clock, identity, stale_s=stale_s, beat_s=stale_s / 3
    )
    if not lock.acquire():
        yield None
        return
    try:
        yield LockHeld(lock)
    finally:
        lock.release()
