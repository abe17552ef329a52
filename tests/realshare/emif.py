"""`emif` as shipped, for the real-share harness, with one smbnetfs bug kept out of the way:

    python -m tests.realshare.emif run --config CONFIG

smbnetfs fails every open with O_APPEND (EIO; its libsmbclient child dies with ENXIO), and a
stream of such opens wrecks the whole mount: with three mounts each opening a file with
O_APPEND every 0.3 s for 60 s, the other calls on them got 361 EIO and two of the three mounts
hung for good; without the appends, no error and no hang. The macOS client has no such bug.
So here an O_APPEND open of a file on an smbnetfs mount is made without the flag and
positioned at the end, which is the same for a file with one writer (metrics/<host>/*.csv).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from emif_daemon.cli.main import main

_open = os.open


def _smbnetfs_mounts() -> tuple[str, ...]:
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        return tuple(line.split()[1] + "/" for line in fh if line.split()[2] == "fuse.smbnetfs")


MOUNTS = _smbnetfs_mounts()


def open_without_append(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
    if flags & os.O_APPEND and str(os.fspath(path)).startswith(MOUNTS):
        fd = _open(path, flags & ~os.O_APPEND, mode, **kwargs)
        os.lseek(fd, 0, os.SEEK_END)
        return fd
    return _open(path, flags, mode, **kwargs)


if __name__ == "__main__":
    os.open = open_without_append
    sys.exit(main())
