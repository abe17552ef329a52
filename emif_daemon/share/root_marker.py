"""The root's marker: proof that `paths.root` is the shared root and not an empty folder
where a share should be mounted (docs/protocol.md#the-root).

`emif init` creates the tree and `.emif/root.json`, once, on the share. The daemon never
creates a root: it waits while the marker is missing (a share not mounted yet at login, a
share that dropped), so it never builds a tree on the local disk, and it checks the
marker again at every rescan.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from dataclasses import dataclass
from typing import Any

from emif_daemon.share.atomic import publish_new
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.layout import Layout

# A tree the daemon made before markers existed: adopted once, with a log line.
_TREE = ("queue", "GENERATIONS", ".emif")


@dataclass(frozen=True)
class RootMarker:
    root_id: str
    created: str
    created_by: str


def read_marker(layout: Layout) -> RootMarker | None:
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        doc: dict[str, Any] = json.loads(layout.marker.read_bytes())
        return RootMarker(str(doc["root_id"]), str(doc["created"]), str(doc["created_by"]))
    return None


def init_root(layout: Layout, host: str) -> tuple[RootMarker, bool]:
    """Create the tree and its marker (idempotent; safe while another host does the same).
    Returns the marker and whether this call created it."""
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.ensure()
    marker = RootMarker(secrets.token_hex(8), utc_stamp(), host)
    body = json.dumps(marker.__dict__, indent=2).encode()
    try:
        publish_new(layout.marker, body)
    except FileExistsError:
        found = read_marker(layout)
        if found is not None:
            return found, False
        raise
    return marker, True


def adoptable(layout: Layout) -> bool:
    """A root with the daemon's tree but no marker: made before markers existed."""
    return layout.marker.parent.is_dir() and all((layout.root / n).is_dir() for n in _TREE)


def permission_hint(path: object) -> str:
    """What to do when macOS's privacy controls (TCC) refuse a program a network volume:
    the grant belongs to the interpreter launchd runs, not to Terminal."""
    return (
        f"macOS refuses this program access to {path} (Operation not permitted): grant "
        f"{os.path.realpath(sys.executable)} access in System Settings → Privacy & Security → "
        "Files and Folders → Network Volumes (or Full Disk Access); granting Terminal does "
        "not cover a program launchd starts. The daemon goes on by itself once granted"
    )


def root_problem(layout: Layout, expected: RootMarker | None = None) -> str | None:
    """Why `layout.root` is not (or no longer) the initialised root, or None."""
    try:
        os.stat(layout.marker)
    except PermissionError:
        return permission_hint(layout.root)
    except OSError:
        pass
    marker = read_marker(layout)
    if marker is None:
        if not layout.root.is_dir():
            return f"{layout.root} does not exist: is the share mounted?"
        return (
            f"{layout.root} has no {layout.marker.relative_to(layout.root)}: is the share "
            f"mounted? (a new root is set up once with `emif init`)"
        )
    if expected is not None and marker.root_id != expected.root_id:
        return f"{layout.root} is another root now (id {marker.root_id}, was {expected.root_id})"
    return None
