"""An SMB client that behaves like the macOS one, as a FUSE file system: one per simulated Mac.

    python -m tests.realshare.macsmb SERVER SHARE MOUNTPOINT --user U --password P
        [--dir-cache-s 2] [--attr-s 2]

It speaks SMB2/3 to the server itself (smbprotocol, its own connection per mount), so what the
protocol guarantees comes from the server, as for a Mac: an exclusive create is one CREATE with
FILE_CREATE (smbnetfs does not send that: three mounts racing O_CREAT|O_EXCL on one name all
won in 36 of 60 rounds), lookups ignore case (Samba's default for SMB2), a rename never replaces
on the server. And as the Mac client does (docs/protocol.md, the facts behind it):

- names go to the server precomposed (NFC) and listings come back decomposed (NFD);
- a rename onto a name the client finds deletes that target first, then renames;
- no no-replace rename (libfuse 2: renameat2(RENAME_NOREPLACE) answers EINVAL), no hard links;
- listings are cached per folder for `--dir-cache-s`, dropped by a change made through this
  mount, not by anyone else's; the kernel caches attributes for `--attr-s`;
- every open lets others read, write and delete (deny-none), and `fsync` is an SMB2 FLUSH.
"""

from __future__ import annotations

import argparse
import errno
import functools
import itertools
import os
import stat
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

try:
    import smbclient
    from fuse import FUSE, Operations
    from smbclient._io import SMBFileTransaction, SMBRawIO, query_info, set_info
    from smbprotocol.exceptions import SMBException, SMBOSError, SMBResponseException
    from smbprotocol.file_info import (
        FileBasicInformation,
        FileRenameInformation,
        FileStandardInformation,
    )
    from smbprotocol.open import CreateOptions, FilePipePrinterAccessMask
    from smbprotocol.structure import DateTimeField

    IMPORT_ERROR = ""
except (ImportError, OSError) as exc:
    IMPORT_ERROR = f"needs smbprotocol and fusepy with libfuse 2: {exc}"
    Operations = object  # type: ignore[assignment,misc]

STATUS_END_OF_FILE = 0xC0000011
# NT statuses as the Mac client reports them where smbprotocol has no errno for them
MAC_ERRNO = {
    0xC0000022: errno.EACCES,  # STATUS_ACCESS_DENIED
    0xC0000043: errno.EBUSY,  # STATUS_SHARING_VIOLATION (smbprotocol says EPERM)
    0xC0000056: errno.ENOENT,  # STATUS_DELETE_PENDING: deleted, still open somewhere
}


def _mac_error(status: int, exc: Exception) -> OSError:
    code = MAC_ERRNO.get(status) or SMBOSError(status, "").errno or errno.EIO
    return OSError(code, f"SMB: {exc}")


def _smb_errors(func: F) -> F:
    """An SMB failure as the errno a Mac program would see; a broken connection is EIO."""

    @functools.wraps(func)
    def wrapper(self: MacSmb, *args: Any) -> Any:
        try:
            return func(self, *args)
        except SMBOSError as exc:
            raise _mac_error(exc.ntstatus, exc) from exc
        except OSError:
            raise
        except SMBResponseException as exc:
            raise _mac_error(exc.status, exc) from exc
        except (SMBException, ValueError, ConnectionError) as exc:
            raise OSError(errno.EIO, f"SMB: {exc}") from exc

    return wrapper  # type: ignore[return-value]


def server_rename(src: str, dst_in_share: str) -> None:
    """One SMB2 rename that never replaces (smbclient.rename first opens the target, which a
    file without execute permission refuses)."""
    raw = SMBRawIO(
        src,
        mode="r",
        share_access="rwd",
        desired_access=FilePipePrinterAccessMask.DELETE,
        create_options=CreateOptions.FILE_OPEN_REPARSE_POINT,
    )
    with raw, SMBFileTransaction(raw) as transaction:
        info = FileRenameInformation()
        info["replace_if_exists"] = False
        info["file_name"] = dst_in_share
        set_info(transaction, info)


class Handle:
    def __init__(self, raw: Any, unc: str) -> None:
        self.raw = raw
        self.unc = unc
        self.lock = threading.Lock()


class MacSmb(Operations):  # type: ignore[misc]
    use_ns = True
    flag_nullpath_ok = 1  # a file deleted while open can still be read (libfuse passes no path)

    def __init__(self, server: str, share: str, dir_cache_s: float) -> None:
        self.top = f"\\\\{server}\\{share}"
        self.dir_cache_s = dir_cache_s
        self._listings: dict[str, tuple[float, list[tuple[str, dict[str, int]]]]] = {}
        self._handles: dict[int, Handle] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _unc(self, path: str) -> str:
        """The server path: the Mac client sends every name precomposed."""
        parts = [unicodedata.normalize("NFC", p) for p in path.split("/") if p]
        return "\\".join([self.top, *parts])

    def _parent(self, path: str) -> str:
        return self._unc(path.rpartition("/")[0])

    def _changed(self, *folders: str) -> None:
        with self._lock:
            for folder in folders:
                self._listings.pop(folder, None)

    def _keep(self, raw: Any, unc: str) -> int:
        fh = next(self._ids)
        with self._lock:
            self._handles[fh] = Handle(raw, unc)
        return fh

    # -- attributes -------------------------------------------------------------------------
    @_smb_errors
    def getattr(self, path: str | None, fh: Any = None) -> dict[str, int]:
        if path is None:  # a file deleted while open: ask through its handle
            return self._fstat(self._handles[fh.fh])
        st = smbclient.lstat(self._unc(path))
        mode = (stat.S_IFDIR | 0o755) if stat.S_ISDIR(st.st_mode) else (stat.S_IFREG | 0o644)
        return {
            "st_mode": mode,
            "st_nlink": max(1, st.st_nlink),
            "st_size": st.st_size,
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
            "st_atime": st.st_atime_ns,
            "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_chgtime_ns,
        }

    def _fstat(self, handle: Handle) -> dict[str, int]:
        with handle.lock, SMBFileTransaction(handle.raw) as transaction:
            query_info(transaction, FileBasicInformation)
            query_info(transaction, FileStandardInformation)
        basic, standard = transaction.results
        epoch = DateTimeField.EPOCH_FILETIME
        times = {
            key: (basic[field].get_value() - epoch) * 100
            for key, field in (
                ("st_atime", "last_access_time"),
                ("st_mtime", "last_write_time"),
                ("st_ctime", "change_time"),
            )
        }
        return {
            "st_mode": stat.S_IFREG | 0o644,
            "st_nlink": 1,
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
            "st_size": standard["end_of_file"].get_value(),
            **times,
        }

    def access(self, path: str, amode: int) -> None:
        """Permissions are the server's business."""

    def chmod(self, path: str, mode: int) -> None:
        """Ignored, as on most SMB mounts."""

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Ignored, as on most SMB mounts."""

    @_smb_errors
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        smbclient.utime(self._unc(path), ns=times or (time.time_ns(), time.time_ns()))

    @_smb_errors
    def truncate(self, path: str, length: int, fh: Any = None) -> None:
        if fh:
            handle = self._handles[fh.fh]
            with handle.lock:
                handle.raw.truncate(length)
        else:  # smbclient.truncate opens deny-all: refused while anyone has the file open
            with self._open(self._unc(path), "r+b") as raw:
                raw.truncate(length)

    def statfs(self, path: str) -> dict[str, int]:
        blocks = {"f_blocks": 1 << 28, "f_bfree": 1 << 27, "f_bavail": 1 << 27}
        files = {"f_files": 1 << 20, "f_ffree": 1 << 19, "f_favail": 1 << 19}
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255, **blocks, **files}

    # -- folders ----------------------------------------------------------------------------
    @_smb_errors
    def readdir(self, path: str, fh: Any) -> Iterator[Any]:
        unc = self._unc(path)
        now = time.monotonic()
        with self._lock:
            cached = self._listings.get(unc)
        if cached is None or now - cached[0] >= self.dir_cache_s:
            entries = []
            for entry in smbclient.scandir(unc):
                mode = stat.S_IFDIR if entry.is_dir() else stat.S_IFREG
                entries.append((unicodedata.normalize("NFD", entry.name), {"st_mode": mode}))
            cached = (now, entries)
            with self._lock:
                self._listings[unc] = cached
        yield from (".", "..")
        for name, attrs in cached[1]:
            yield name, attrs, 0

    @_smb_errors
    def mkdir(self, path: str, mode: int) -> None:
        smbclient.mkdir(self._unc(path))
        self._changed(self._parent(path))

    @_smb_errors
    def rmdir(self, path: str) -> None:
        smbclient.rmdir(self._unc(path))
        self._changed(self._parent(path), self._unc(path))

    def fsyncdir(self, path: str, datasync: int, fh: Any) -> None:
        """A no-op, as on the Mac's SMB client."""

    # -- names ------------------------------------------------------------------------------
    @_smb_errors
    def unlink(self, path: str) -> None:
        smbclient.remove(self._unc(path))
        self._changed(self._parent(path))

    @_smb_errors
    def rename(self, old: str, new: str) -> None:
        src, dst = self._unc(old), self._unc(new)
        if src.casefold() != dst.casefold():
            try:
                target = smbclient.lstat(dst)
            except OSError as exc:  # smbprotocol's errors are OSError, never its subclasses
                if exc.errno != errno.ENOENT:
                    raise
                target = None
            if target is not None:  # smbfs removes a target it knows first: two operations
                if stat.S_ISDIR(target.st_mode):
                    smbclient.rmdir(dst)
                else:
                    smbclient.remove(dst)
        server_rename(src, dst[len(self.top) + 1 :])  # refused if the name exists (EEXIST)
        self._changed(self._parent(old), self._parent(new))

    def link(self, target: str, source: str) -> None:
        raise OSError(errno.ENOTSUP, "no hard links on an SMB share")

    def symlink(self, target: str, source: str) -> None:
        raise OSError(errno.ENOTSUP, "no symbolic links here")

    # -- files ------------------------------------------------------------------------------
    def _open(self, unc: str, mode: str) -> Any:
        return smbclient.open_file(unc, mode=mode, buffering=0, share_access="rwd")

    @_smb_errors
    def create(self, path: str, mode: int, fi: Any) -> int:
        unc = self._unc(path)
        if fi.flags & os.O_EXCL:
            raw = self._open(unc, "x+b")  # one CREATE with FILE_CREATE: atomic on the server
        elif fi.flags & os.O_TRUNC:
            raw = self._open(unc, "w+b")
        else:
            try:
                raw = self._open(unc, "x+b")
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                raw = self._open(unc, "r+b")
        fi.fh = self._keep(raw, unc)
        self._changed(self._parent(path))
        return 0

    @_smb_errors
    def open(self, path: str, fi: Any) -> int:
        unc = self._unc(path)
        writes = fi.flags & os.O_ACCMODE != os.O_RDONLY
        fi.fh = self._keep(self._open(unc, "r+b" if writes else "rb"), unc)
        return 0

    @_smb_errors
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        handle = self._handles[fi.fh]
        out = bytearray()
        with handle.lock:
            raw = handle.raw
            raw.fd.end_of_file = max(raw.fd.end_of_file, offset + size)  # grown by others?
            raw.seek(offset)
            while len(out) < size:
                buf = bytearray(size - len(out))
                try:
                    got = raw.readinto(buf)
                except SMBResponseException as exc:
                    if exc.status == STATUS_END_OF_FILE:
                        break
                    raise
                if not got:
                    break
                out += buf[:got]
        return bytes(out)

    @_smb_errors
    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        handle = self._handles[fi.fh]
        with handle.lock:
            handle.raw.seek(offset)
            done = 0
            while done < len(data):
                done += handle.raw.write(data[done:])
        return done

    def flush(self, path: str, fi: Any) -> None:
        """Writes are sent at once."""

    @_smb_errors
    def fsync(self, path: str, datasync: int, fi: Any) -> None:
        handle = self._handles[fi.fh]
        with handle.lock:
            handle.raw.fd.flush()

    @_smb_errors
    def release(self, path: str, fi: Any) -> None:
        with self._lock:
            handle = self._handles.pop(fi.fh)
        handle.raw.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("server")
    parser.add_argument("share")
    parser.add_argument("mountpoint")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--dir-cache-s", type=float, default=30.0, help="listing cache (s)")
    parser.add_argument("--attr-s", type=float, default=2.0, help="kernel attribute cache (s)")
    args = parser.parse_args()
    if IMPORT_ERROR:
        print(IMPORT_ERROR, file=sys.stderr)
        return 2
    smbclient.register_session(args.server, username=args.user, password=args.password)
    FUSE(
        MacSmb(args.server, args.share, args.dir_cache_s),
        args.mountpoint,
        foreground=True,
        raw_fi=True,
        nothreads=True,  # one request at a time on this client's connection
        fsname=f"//{args.server}/{args.share}",
        subtype="macsmb",
        hard_remove=True,
        entry_timeout=args.attr_s,
        attr_timeout=args.attr_s,
        negative_timeout=0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
