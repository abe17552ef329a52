"""A FUSE layer that makes a local folder behave like a share mounted by the macOS SMB client.

What the Mac client does and a Linux mount does not (docs/protocol.md, the facts behind it):

- listings come back in decomposed Unicode (NFD), while names are stored as sent (NFC);
- lookups ignore case and normal form, as on a case-insensitive volume: `italy` opens `Italy`,
  and creating `italy` while `Italy` exists fails with EEXIST;
- no native no-replace rename: renameat2(RENAME_NOREPLACE) answers EINVAL (libfuse 2 has no
  rename flags), and a rename onto an existing name deletes the target first, then renames;
- listings are cached per folder for `dir_cache_s` (the Mac keeps them 30-60 s); a change made
  through this mount drops that folder's cached listing, a change made by anyone else does not;
- no hard links.

One mount = one Mac: mount the same folder twice and each has its own listing cache.

    python -m tests.maclike SOURCE MOUNTPOINT [--dir-cache-s S] [--attr-s S]

Tests start it with `MacLikeMount` and stop it with SIGTERM (the mount goes with the process).
It needs fusepy and libfuse 2 (Debian: libfuse2 or libfuse2t64, and fuse3 for fusermount).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

try:
    from fuse import FUSE, Operations

    FUSE_IMPORT_ERROR = ""
except (ImportError, OSError) as exc:  # fusepy raises OSError when libfuse 2 is missing
    FUSE_IMPORT_ERROR = f"fusepy cannot load libfuse 2 ({exc}): install libfuse2 and fusepy"
    Operations = object  # type: ignore[assignment,misc]

STAT_KEYS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_rdev")
TIME_KEYS = ("st_atime", "st_mtime", "st_ctime")


def fold(name: str) -> str:
    """The key under which a case-insensitive, normalization-insensitive volume compares."""
    return unicodedata.normalize("NFC", name).casefold()


class MacLike(Operations):  # type: ignore[misc]
    """Pass-through to `source` with the Mac SMB client's names, lookups, renames and caches."""

    use_ns = True  # fusepy: times in nanoseconds
    flag_nullpath_ok = 1  # a file deleted while open can still be read (libfuse passes no path)

    def __init__(self, source: str, dir_cache_s: float) -> None:
        self.source = source
        self.dir_cache_s = dir_cache_s
        self._listings: dict[str, tuple[float, list[tuple[str, dict[str, int]]]]] = {}
        self._lock = threading.Lock()

    # -- names ------------------------------------------------------------------------------
    def _match(self, parent: str, name: str) -> str:
        """The entry of `parent` that `name` means: itself, else the one equal up to case and
        normal form, else the name as the Mac client sends a new one (NFC)."""
        if os.path.lexists(os.path.join(parent, name)):
            return name
        key = fold(name)
        with contextlib.suppress(OSError):
            for entry in os.listdir(parent):
                if fold(entry) == key:
                    return entry
        return unicodedata.normalize("NFC", name)

    def _real(self, path: str) -> str:
        real = self.source
        for part in path.split("/"):
            if part:
                real = os.path.join(real, self._match(real, part))
        return real

    def _parent(self, path: str) -> tuple[str, str]:
        """(real parent folder, the entry name `path` means in it)."""
        head, _, leaf = path.rpartition("/")
        parent = self._real(head)
        return parent, self._match(parent, leaf)

    def _changed(self, *folders: str) -> None:
        """A change made through this mount drops the folder's cached listing, as on the Mac."""
        with self._lock:
            for folder in folders:
                self._listings.pop(folder, None)

    # -- attributes -------------------------------------------------------------------------
    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        st = os.fstat(fh.fh) if fh else os.lstat(self._real(path))  # fh: a NULL pointer or not
        attrs = {key: getattr(st, key) for key in STAT_KEYS}
        attrs.update({key: getattr(st, key + "_ns") for key in TIME_KEYS})
        return attrs

    def access(self, path: str, amode: int) -> None:
        if not os.access(self._real(path), amode):
            raise OSError(errno.EACCES, "access denied")

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._real(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.lchown(self._real(path), uid, gid)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        if times is None:
            os.utime(self._real(path))
        else:
            os.utime(self._real(path), ns=times)

    def truncate(self, path: str, length: int, fh: Any = None) -> None:
        if fh:
            os.ftruncate(fh.fh, length)
        else:
            os.truncate(self._real(path), length)

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._real(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")
        return {key: getattr(st, key) for key in (*keys, "f_flag", "f_frsize", "f_namemax")}

    # -- folders ----------------------------------------------------------------------------
    def readdir(self, path: str, fh: Any) -> Iterator[Any]:
        real = self._real(path)
        now = time.monotonic()
        with self._lock:
            cached = self._listings.get(real)
        if cached is None or now - cached[0] >= self.dir_cache_s:
            entries = []
            with os.scandir(real) as it:
                for entry in it:
                    nfd = unicodedata.normalize("NFD", entry.name)
                    entries.append((nfd, {"st_mode": entry.stat(follow_symlinks=False).st_mode}))
            cached = (now, entries)
            with self._lock:
                self._listings[real] = cached
        yield from (".", "..")
        for name, attrs in cached[1]:
            yield name, attrs, 0

    def mkdir(self, path: str, mode: int) -> None:
        parent, name = self._parent(path)
        os.mkdir(os.path.join(parent, name), mode)
        self._changed(parent)

    def rmdir(self, path: str) -> None:
        parent, name = self._parent(path)
        os.rmdir(os.path.join(parent, name))
        self._changed(parent, os.path.join(parent, name))

    def fsyncdir(self, path: str, datasync: int, fh: Any) -> None:
        """A no-op, as on the Mac's SMB client."""

    # -- names: create, remove, rename, links -----------------------------------------------
    def unlink(self, path: str) -> None:
        parent, name = self._parent(path)
        os.unlink(os.path.join(parent, name))
        self._changed(parent)

    def rename(self, old: str, new: str) -> None:
        src_parent, src_name = self._parent(old)
        dst_parent, dst_name = self._parent(new)
        src = os.path.join(src_parent, src_name)
        dst = os.path.join(dst_parent, dst_name)
        wanted = os.path.join(dst_parent, unicodedata.normalize("NFC", new.rpartition("/")[2]))
        if dst != src and os.path.lexists(dst):
            # smbfs sends a rename that never replaces: it removes a target it knows first
            if os.path.isdir(dst) and not os.path.islink(dst):
                if not os.path.isdir(src):
                    raise OSError(errno.EISDIR, "is a directory", new)
                os.rmdir(dst)
            else:
                os.unlink(dst)
        os.rename(src, wanted)
        self._changed(src_parent, dst_parent)

    def link(self, target: str, source: str) -> None:
        raise OSError(errno.ENOTSUP, "no hard links on an SMB share")

    def symlink(self, target: str, source: str) -> None:
        parent, name = self._parent(target)
        os.symlink(source, os.path.join(parent, name))
        self._changed(parent)

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    # -- files ------------------------------------------------------------------------------
    def create(self, path: str, mode: int, fi: Any) -> int:
        parent, name = self._parent(path)
        flags = (fi.flags & ~os.O_ACCMODE) | os.O_RDWR | os.O_CREAT
        fi.fh = os.open(os.path.join(parent, name), flags, mode)
        self._changed(parent)
        return 0

    def open(self, path: str, fi: Any) -> int:
        fi.fh = os.open(self._real(path), fi.flags & ~os.O_CREAT)
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        return os.pread(fi.fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        return os.pwrite(fi.fh, data, offset)

    def flush(self, path: str, fi: Any) -> None:
        """Nothing is buffered here."""

    def fsync(self, path: str, datasync: int, fi: Any) -> None:
        os.fsync(fi.fh)

    def release(self, path: str, fi: Any) -> None:
        os.close(fi.fh)


# -- running it ---------------------------------------------------------------------------------


def is_mounted(mountpoint: Path) -> bool:
    """Whether a FUSE file system is mounted at `mountpoint` (from the mount table, so a dead
    mount that answers ENOTCONN counts as mounted)."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            point = fields[1].encode().decode("unicode_escape")  # "\040" for a space
            if point == target and fields[2].startswith("fuse"):
                return True
    return False


def force_unmount(mountpoint: Path) -> None:
    """Detach a mount whose process is gone or stuck (lazily, as libfuse itself does)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount"
    subprocess.run([tool, "-u", "-z", str(mountpoint)], capture_output=True, check=False)


class MountFailed(RuntimeError):
    """The layer did not come up; the message says why (its own error output)."""


class MacLikeMount:
    """`python -m tests.maclike` as a subprocess: start() mounts, stop() unmounts (SIGTERM)."""

    def __init__(
        self,
        source: Path,
        mountpoint: Path,
        *,
        dir_cache_s: float = 2.0,
        attr_s: float = 1.0,
        log: Path | None = None,
    ) -> None:
        self.source = source
        self.mountpoint = mountpoint
        self.dir_cache_s = dir_cache_s
        self.attr_s = attr_s
        self.log = log or mountpoint.parent / f"{mountpoint.name}.maclike.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> MacLikeMount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tests.maclike", str(self.source), str(self.mountpoint)]
        cmd += ["--dir-cache-s", str(self.dir_cache_s), "--attr-s", str(self.attr_s)]
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=err, stderr=err
            )
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-1500:]
                raise MountFailed(f"the Mac-like layer did not mount {self.mountpoint}: {tail}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Unmount: the layer unmounts itself on SIGTERM; a stuck one is killed and detached."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if is_mounted(self.mountpoint):
            force_unmount(self.mountpoint)
        self.proc = None

    def __enter__(self) -> MacLikeMount:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def fuse_problem(scratch: Path) -> str | None:
    """Why FUSE file systems cannot be mounted here (None when they can): what a test that
    needs one says when it skips. Tries a real mount of the layer in `scratch`."""
    if not sys.platform.startswith("linux"):
        return f"FUSE tests run on Linux only (this is {sys.platform})"
    if FUSE_IMPORT_ERROR:
        return FUSE_IMPORT_ERROR
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"cannot open /dev/fuse: {exc.strerror}"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "no fusermount: install fuse3"
    (scratch / "src").mkdir(parents=True, exist_ok=True)
    try:
        with MacLikeMount(scratch / "src", scratch / "mnt", log=scratch / "probe.log"):
            pass
    except MountFailed as exc:
        return str(exc)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the folder to serve (the share's contents)")
    parser.add_argument("mountpoint")
    parser.add_argument("--dir-cache-s", type=float, default=30.0, help="listing cache (s)")
    parser.add_argument("--attr-s", type=float, default=1.0, help="kernel attribute cache (s)")
    args = parser.parse_args()
    if FUSE_IMPORT_ERROR:
        print(FUSE_IMPORT_ERROR, file=sys.stderr)
        return 2
    source = os.path.realpath(args.source)
    FUSE(
        MacLike(source, args.dir_cache_s),
        args.mountpoint,
        foreground=True,
        raw_fi=True,
        fsname=f"maclike:{source}",
        subtype="maclike",
        hard_remove=True,  # no .fuse_hidden files: an open file is deleted as on the server
        entry_timeout=args.attr_s,
        attr_timeout=args.attr_s,
        negative_timeout=0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
