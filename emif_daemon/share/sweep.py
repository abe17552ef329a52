"""The orphan sweep: temp files and folders of writers that died, removed or completed
(docs/protocol.md#publishing)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from emif_daemon.share.atomic import final_name, parse_temp_name, rename_noreplace


def clean_orphans(
    folders: list[Path],
    *,
    machine: str,
    server_now: float,
    max_age_s: float,
    alive: Callable[[int], bool],
    descend: Callable[[Path], bool] = lambda _folder: True,
    finish: Callable[[Path, Path], bool] = lambda _tmp, _final: False,
) -> list[Path]:
    """Remove temp files and folders left by dead writers; returns what was removed.

    This machine's go as soon as their process is gone; other machines' only once older
    than `max_age_s` by the file server's clock, since we cannot see their processes.
    The walk is iterative (a tree of any depth) and enters only folders `descend` allows,
    so a sweep costs the folders where temp files can be, not every cut-out folder.
    `finish(tmp, final)` may instead complete a dead writer's publish (True: nothing to
    remove), for a file that was whole before its writer died.
    """
    removed: list[Path] = []
    stack = list(folders)
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # gone, or unreadable: nothing we could remove there anyway
        for entry in entries:
            owner = parse_temp_name(entry.name)
            path = Path(entry.path)
            if owner is None:
                if entry.is_dir(follow_symlinks=False) and descend(path):
                    stack.append(path)
                continue
            try:
                age = server_now - path.lstat().st_mtime
            except FileNotFoundError:
                continue
            mine = owner[0] == machine
            if (mine and not alive(owner[1])) or (not mine and age > max_age_s):
                if finish(path, path.with_name(final_name(entry.name))):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    _remove_tree(path)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _remove_tree(top: Path) -> None:
    """`shutil.rmtree` without recursion: a temp folder is shallow, but never trust that."""
    stack, folders = [top], []
    while stack:
        folder = stack.pop()
        folders.append(folder)
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    Path(entry.path).unlink(missing_ok=True)
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def finish_sidecar(tmp: Path, final: Path) -> bool:
    """For the orphan sweep: a sidecar left under its temp name by a host killed between
    publishing an image and its sidecar goes into place (True); any other temp file is
    for removal (False)."""
    if final.suffix != ".json" or final.exists() or not final.with_suffix(".png").exists():
        return False
    try:
        rename_noreplace(tmp, final)
    except OSError:
        return False
    return True
