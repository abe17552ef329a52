"""Names a file takes while one process holds it (docs/protocol.md#held-names).

`[.]<name>.<machine>.<pid>.<random><mark>`: unique to this process, so no two hosts ever
rename onto the same held name, and carrying the machine tag and pid, so the machine that
wrote it can tell whether its writer is alive. Temp files (`.emiftmp`), prompts files between
two folders (`.moving`), broken claims and broken locks (`.broken`) are all held names.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from emif_daemon.share.identity import MACHINE_TAG_CHARS, machine_tag

TOKEN_HEX = 8  # random hex digits in a held name
PID_WIDTH = 7  # the widest pid the daemon writes into a name (Linux allows 4 194 304)

# The marks: what a held name is for.
TEMP_MARK = ".emiftmp"  # a file being written (atomic.py)
MOVING_MARK = ".moving"  # a prompts file between two queue folders (intake/queue_files.py)
BROKEN_MARK = ".broken"  # a lock broken as stale (locks.py)
CLAIM_BROKEN_MARK = ""  # a broken claim in .emif/broken/, counted as an attempt (claims.py)


@dataclass(frozen=True)
class Held:
    """What a held name says: the name it stands for, and who holds it."""

    name: str
    machine: str
    pid: int


def held_name(
    name: str,
    mark: str,
    *,
    hidden: bool = True,
    machine: str | None = None,
    pid: int | None = None,
) -> str:
    """A new held name for `name` (this machine and process unless told otherwise)."""
    machine = machine_tag() if machine is None else machine
    pid = os.getpid() if pid is None else pid
    token = secrets.token_hex(TOKEN_HEX // 2)
    return f"{'.' if hidden else ''}{name}.{machine}.{pid}.{token}{mark}"


def longest_held_name(name: str, mark: str, *, hidden: bool = True) -> str:
    """The longest held name `name` can get: what the 255-byte budget of a name must fit."""
    owner = f"{'f' * MACHINE_TAG_CHARS}.{'9' * PID_WIDTH}.{'f' * TOKEN_HEX}"
    return f"{'.' if hidden else ''}{name}.{owner}{mark}"


def parse_held(name: str, mark: str, *, hidden: bool = True) -> Held | None:
    """The parts of a held name with `mark`, or None if `name` is not one."""
    if not name.endswith(mark) or name.startswith(".") != hidden:
        return None
    body = name[1 if hidden else 0 : len(name) - len(mark)]
    parts = body.rsplit(".", 3)
    if len(parts) != 4 or not parts[2].isdigit() or not parts[0]:
        return None
    return Held(parts[0], parts[1], int(parts[2]))
