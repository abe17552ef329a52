"""The files of queue/ and its subfolders: which are prompts files, and moving one between
folders so that exactly one host does it (docs/protocol.md#prompts-files)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from emif_daemon.share.atomic import rename_noreplace
from emif_daemon.share.held import MOVING_MARK, held_name, parse_held
from emif_daemon.share.layout import Layout, is_ignored


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


MOVING_STALE_S = 600.0  # a move left this long was its host's last act: undone


def move_unique(src: Path, folder: Path, avoid: tuple[Path, ...] = ()) -> Path | None:
    """Rename `src` into `folder` under a name not taken yet; None if another host won.

    First the file is renamed, beside itself, to a name only this process uses: one host
    wins it, and no rename ever targets a name another host may be renaming onto (a Mac's
    SMB client "replaces" by deleting the target first, which could delete the winner's
    file). Then it goes to `folder` under a free name; names also taken in `avoid` are
    skipped, so a batch keeps one name from accepted/ to done/.
    """
    held = src.with_name(held_name(src.name, MOVING_MARK))
    try:
        os.rename(src, held)
    except FileNotFoundError:
        return None  # another host took it
    stem, suffix = src.stem, src.suffix
    for n in range(1, 1000):
        target = folder / (src.name if n == 1 else f"{stem}-{n}{suffix}")
        if any((other / target.name).exists() for other in avoid):
            continue
        try:
            rename_noreplace(held, target)
            return target
        except FileExistsError:
            continue
    os.rename(held, src)  # give it back rather than strand it
    raise OSError(f"no free name for {src.name} in {folder}")


def undo_stranded_moves(folders: tuple[Path, ...], now: float) -> list[Path]:
    """Put back files a host took in hand and never moved on (it died between the two
    renames of `move_unique`); returns where they went back to."""
    restored = []
    for folder in folders:
        try:
            entries = [e for e in os.scandir(folder) if e.name.endswith(MOVING_MARK)]
        except FileNotFoundError:
            continue
        for entry in entries:
            held = parse_held(entry.name, MOVING_MARK)
            if held is None:
                continue
            name = held.name
            with contextlib.suppress(FileNotFoundError, FileExistsError):
                if now - entry.stat().st_mtime > MOVING_STALE_S:
                    rename_noreplace(Path(entry.path), folder / name)
                    restored.append(folder / name)
    return restored
