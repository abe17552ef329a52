"""The files of queue/ and its subfolders: which are prompts files, and moving one between
folders so that exactly one host does it (docs/protocol.md#prompts-files)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from emif_daemon.share.atomic import rename_noreplace
from emif_daemon.share.held import MOVING_MARK, held_name, parse_held
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import Layout, is_ignored
from emif_daemon.share.names import key_component


def is_prompts_name(name: str) -> bool:
    """`*.json` in any case; never a temp or hidden file, never an `.error.json` report."""
    lower = name.lower()
    return lower.endswith(".json") and not lower.endswith(".error.json") and not is_ignored(name)


def stray_files(layout: Layout) -> list[str]:
    """Files in queue/ that are not prompts files and not temporary: `prompts.txt`."""
    try:
        entries = list(os.scandir(layout.queue))
    except FileNotFoundError:
        return []
    return sorted(
        e.name
        for e in entries
        if not is_ignored(e.name) and not is_prompts_name(e.name) and not e.is_dir()
    )


def queued_files(layout: Layout) -> list[Path]:
    try:
        entries = list(os.scandir(layout.queue))
    except FileNotFoundError:
        return []
    return sorted(Path(e.path) for e in entries if e.is_file() and is_prompts_name(e.name))


def unique_name(folder: Path, name: str) -> str:
    """`name`, or `<stem>-<n><suffix>` with the first n not taken in `folder` (for records
    kept beside each other, where a race costs nothing)."""
    stem, suffix = Path(name).stem, Path(name).suffix
    for n in range(1, 10_000):
        candidate = name if n == 1 else f"{stem}-{n}{suffix}"
        if not (folder / candidate).exists():
            return candidate
    raise OSError(f"no free name for {name} in {folder}")


MOVING_STALE_S = 600.0  # a move left this long by another machine was its host's last act


def name_keys(*folders: Path) -> set[str]:
    """The stems in `folders`, compared as a Mac compares names (a hint: a listing)."""
    keys: set[str] = set()
    for folder in folders:
        with contextlib.suppress(OSError):
            keys.update(key_component(Path(e.name).stem) for e in os.scandir(folder))
    return keys


def move_unique(
    src: Path,
    folder: Path,
    avoid: tuple[Path, ...] = (),
    taken: Callable[[str], bool] = lambda _name: False,
) -> Path | None:
    """Rename `src` into `folder` under a name not taken yet; None if another host won.

    First the file is renamed, beside itself, to a name only this process uses: one host
    wins it, and no rename ever targets a name another host may be renaming onto (a Mac's
    SMB client "replaces" by deleting the target first, which could delete the winner's
    file). Then it goes to `folder` under a free name, by a no-replace rename; names whose
    stem a Mac would take for one already in `avoid`, or that are `taken`, are skipped, so a
    batch keeps one name from accepted/ to done/. Those looks are hints: what makes a
    batch's name its own is its plan's path (inbox.py).
    """
    held = src.with_name(held_name(src.name, MOVING_MARK))
    try:
        os.rename(src, held)
    except FileNotFoundError:
        return None  # another host took it
    stem, suffix = src.stem, src.suffix
    known = name_keys(*avoid) if avoid else set()
    for n in range(1, 1000):
        target = folder / (src.name if n == 1 else f"{stem}-{n}{suffix}")
        if key_component(target.stem) in known or taken(target.name):
            continue
        try:
            rename_noreplace(held, target)
            return target
        except FileExistsError:
            continue
    os.rename(held, src)  # give it back rather than strand it
    raise OSError(f"no free name for {src.name} in {folder}")


def rename_within(path: Path, taken: Callable[[str], bool]) -> Path | None:
    """Rename `path` in its folder to `<stem>-<n><suffix>`, the first n not `taken` and not
    there (no-replace); None if `path` is gone (another host moved it)."""
    for n in range(2, 1000):
        target = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if taken(target.name):
            continue
        try:
            rename_noreplace(path, target)
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None
        return target
    raise OSError(f"no free name for {path.name} in {path.parent}")


def stranded_moves(
    folders: tuple[Path, ...], now: float, me: HostIdentity
) -> tuple[list[tuple[Path, Path]], int]:
    """Files a host took in hand between the two renames of `move_unique` and never moved
    on: (held file, where it goes back) for those whose mover is known gone (its process,
    on this machine) or gave no sign for MOVING_STALE_S (another machine's), and how many
    others are still in hand."""
    back: list[tuple[Path, Path]] = []
    busy = 0
    for folder in folders:
        try:
            entries = [e for e in os.scandir(folder) if e.name.endswith(MOVING_MARK)]
        except FileNotFoundError:
            continue
        for entry in entries:
            held = parse_held(entry.name, MOVING_MARK)
            if held is None:
                continue
            try:
                old = now - entry.stat().st_mtime > MOVING_STALE_S
            except FileNotFoundError:
                continue
            if old or me.process_gone(held.machine, held.pid, None):
                back.append((Path(entry.path), folder / held.name))
            else:
                busy += 1
    return back, busy


def undo_stranded_moves(layout: Layout, now: float, me: HostIdentity) -> tuple[list[Path], int]:
    """Put back the files of moves a dead host left half done (`stranded_moves`): the state
    before the move, which the next round moves on. Returns where they went back to, and
    how many moves are still in hand (work still coming)."""
    back, busy = stranded_moves((layout.queue, layout.accepted), now, me)
    restored = []
    for held, name in back:
        target = name
        if name.parent == layout.queue and name.exists():  # a new file took its name
            target = name.with_name(unique_name(layout.queue, name.name))
        with contextlib.suppress(FileNotFoundError, FileExistsError):
            rename_noreplace(held, target)
            restored.append(target)
    return restored, busy
