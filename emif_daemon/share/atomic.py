"""Atomic publishing on a shared folder, after Maildir (docs/protocol.md#publishing).

Every file appears under its final name only when complete: it is written under a
dot-prefixed name unique to this machine and process, flushed, fsynced, then renamed into
place. No file modification is done after the file is moved to its final position.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

from emif_daemon.errors import NotARegularFile
from emif_daemon.share.held import TEMP_MARK, held_name, parse_held
from emif_daemon.share.identity import machine_tag

# Temp names carry this boot's machine tag, not a host name: the sweep removes a temp file
# of ours as soon as its process is gone, which only this machine can tell.
MACHINE = machine_tag()


def temp_name(final: Path, machine: str = MACHINE) -> Path:
    """`.<name>.<machine>.<pid>.<random>.emiftmp` beside `final`: never an input, never shared."""
    return final.with_name(held_name(final.name, TEMP_MARK, machine=machine))


def parse_temp_name(name: str) -> tuple[str, int] | None:
    """(machine, pid) of a temp name written by `temp_name`, or None."""
    held = parse_held(name, TEMP_MARK)
    return None if held is None else (held.machine, held.pid)


def final_name(temp: str) -> str:
    """The final name a temp name (from `temp_name`) stands for."""
    held = parse_held(temp, TEMP_MARK)
    return temp if held is None else held.name


def durable_sync(fd: int) -> None:
    """Flush a file to stable storage. On macOS `fsync` only reaches the drive's cache;
    F_FULLFSYNC flushes that too (and SMB passes it on to the server), where the volume
    supports it (docs/protocol.md#durability)."""
    full = getattr(fcntl, "F_FULLFSYNC", None)
    if full is not None:
        try:
            fcntl.fcntl(fd, full)
            return
        except OSError:
            pass  # not supported by this volume: the plain fsync below
    os.fsync(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename durable; not every platform or share allows opening a folder."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_dirs(folder: Path) -> None:
    """`mkdir -p` without recursion: pathlib's and os.makedirs recurse once per missing
    level, so a tree 1 000 folders deep would raise RecursionError in every round."""
    missing: list[Path] = []
    path = folder
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            if not path.is_dir():
                raise


def write_temp(final: Path, data: bytes, *, make_parents: bool = True) -> Path:
    """`data` under a temp name beside `final`, synced. Without `make_parents`, a missing
    folder is an error (FileNotFoundError): nothing is written where a share is away."""
    tmp = temp_name(final)
    if make_parents:
        make_dirs(final.parent)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        durable_sync(fh.fileno())
    return tmp


def atomic_write(final: Path, data: bytes, *, make_parents: bool = True) -> None:
    """Write then rename over `final`: for records we own (sidecars, plans), never images."""
    tmp = write_temp(final, data, make_parents=make_parents)
    try:
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def atomic_write_json(final: Path, obj: Any, *, make_parents: bool = True) -> None:
    body = (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()
    atomic_write(final, body, make_parents=make_parents)


def publish_new(final: Path, data: bytes) -> None:
    """Write `data` under `final`, which must not exist yet; FileExistsError if it does."""
    tmp = write_temp(final, data)
    try:
        rename_noreplace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(final.parent)


@contextlib.contextmanager
def building_dir(final: Path) -> Iterator[Path]:
    """A dot-temp folder beside `final`; the caller fills it, then `publish_dir` renames it."""
    tmp = temp_name(final)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, final: Path) -> None:
    for child in tmp.iterdir():
        with open(child, "rb") as fh:
            durable_sync(fh.fileno())
    rename_noreplace(tmp, final)
    fsync_dir(final.parent)


# renameat2(RENAME_NOREPLACE) on Linux, renamex_np(RENAME_EXCL) on macOS: the file server
# refuses to replace an existing name, so two hosts can never overwrite each other's output.
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_AT_FDCWD = -100


def _native_noreplace(src: bytes, dst: bytes) -> int | None:
    if sys.platform.startswith("linux") and hasattr(_LIBC, "renameat2"):
        return int(_LIBC.renameat2(_AT_FDCWD, src, _AT_FDCWD, dst, 1))
    if sys.platform == "darwin" and hasattr(_LIBC, "renamex_np"):
        return int(_LIBC.renamex_np(src, dst, 0x4))
    return None


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename that fails with FileExistsError instead of replacing `dst`."""
    result = _native_noreplace(os.fsencode(src), os.fsencode(dst))
    if result == 0:
        return
    err = ctypes.get_errno() if result is not None else errno.ENOSYS
    if err == errno.EEXIST:
        raise FileExistsError(errno.EEXIST, "already exists", str(dst))
    if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        raise OSError(err, os.strerror(err), str(src))
    # The file system cannot refuse for us: the claim we hold makes this check-then-act safe.
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "already exists", str(dst))
    os.rename(src, dst)


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; NotARegularFile otherwise.

    Opened without blocking, so a FIFO named like an input never hangs a worker.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(errno.EINVAL, "not a regular file (a FIFO, device…)", str(path))
        if st.st_size > max_bytes:
            raise NotARegularFile(
                errno.EFBIG, f"{st.st_size} bytes, at most {max_bytes} are read", str(path)
            )
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise NotARegularFile(errno.EFBIG, f"grew past {max_bytes} bytes", str(path))
    return data


class Broken(Enum):
    """What came of renaming a stale file away."""

    BROKEN = "broken"  # ours now, under the held name
    GONE = "gone"  # it was not there any more (released, or another host broke it)
    TAKEN = "taken"  # what moved was not what we judged stale: put back, not ours


def break_by_rename(path: Path, target: Path, seen: bytes) -> Broken:
    """Rename `path`, whose content was `seen` when judged stale, to the held name `target`.

    Only one breaker's rename of the one file succeeds. Between the look and the rename the
    file may have been broken and taken afresh by someone alive: then what moved differs
    from `seen` and it is put back where it was.
    """
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return Broken.GONE
    try:
        moved = target.read_bytes()
    except OSError:
        moved = None
    if moved != seen:
        with contextlib.suppress(OSError):
            rename_noreplace(target, path)
        return Broken.TAKEN
    fsync_dir(path.parent)
    return Broken.BROKEN
