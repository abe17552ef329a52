"""Run a command and SIGKILL it at its Nth step on the shared root, for the crash tests:

    python -m tests.crash_at N ROOT STEPS_FILE MODULE [ARGS...]

A step is one rename (os.rename, os.replace, a no-replace rename), unlink, fsync or exclusive
create of a path under ROOT. At step N, before it is done, the process kills itself with
SIGKILL, so what is on disk is exactly what steps 1…N-1 left. Each step is appended to
STEPS_FILE as it is about to run (with N = 0 nothing is killed: the test learns how many
steps there are, and what each is). The product knows nothing of this: the hooks are put
around the os functions here, then MODULE runs as `python -m MODULE ARGS`.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from collections.abc import Callable
from typing import Any

from emif_daemon.share import atomic


def main() -> None:
    stop_at, root, steps_file = int(sys.argv[1]), os.path.realpath(sys.argv[2]), sys.argv[3]
    module, args = sys.argv[4], sys.argv[5:]
    count = 0

    def fd_path(fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""

    def step(what: str, path: Any) -> None:
        nonlocal count
        if isinstance(path, int):
            path = fd_path(path)
        elif hasattr(path, "fileno"):
            path = fd_path(path.fileno())
        try:
            name = os.path.realpath(os.fsdecode(os.fspath(path)))
        except TypeError:
            return
        if not name.startswith(root + os.sep):
            return
        count += 1
        with open(steps_file, "a", encoding="utf-8") as fh:
            fh.write(f"{count} {what} {os.path.relpath(name, root)}\n")
        if count == stop_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def around(what: str, real: Callable[..., Any], pick: Callable[..., Any]) -> Callable[..., Any]:
        def hooked(*a: Any, **kw: Any) -> Any:
            step(what, pick(*a, **kw))
            return real(*a, **kw)

        return hooked

    real_open = os.open

    def hooked_open(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if flags & os.O_CREAT and flags & os.O_EXCL:
            step("create-exclusive", path)
        return real_open(path, flags, *a, **kw)

    os.rename = around("rename", os.rename, lambda src, dst, **_: dst)
    os.replace = around("replace", os.replace, lambda src, dst, **_: dst)
    os.unlink = around("unlink", os.unlink, lambda p, **_: p)
    os.remove = os.unlink
    os.fsync = around("fsync", os.fsync, lambda fd: fd)
    os.open = hooked_open
    native = atomic._native_noreplace
    atomic._native_noreplace = around("rename-noreplace", native, lambda src, dst: dst)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
