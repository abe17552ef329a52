"""Each daemon's report of itself (`.emif/hosts/<host>.json`), and the check that no two
machines run under one host id (docs/protocol.md#identity).

Two Macs configured with the same `coordination.host_id` would write one report, one log
and one metrics folder, and people could not tell their work apart; each daemon therefore
refuses to start, or stops, when a live daemon of another machine reports under its id.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from .files import atomic_write_json
from .hooks import HostState
from .identity import HostIdentity
from .layout import Layout


def write_host_report(layout: Layout, identity: HostIdentity, state: HostState) -> None:
    atomic_write_json(
        layout.host_report(state.host),
        {
            **state.to_json(),
            "machine": identity.machine,
            "pid": identity.pid,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        make_parents=False,  # `emif init` made .emif/hosts; gone means the share is away
    )


def read_host_report(layout: Layout, host: str) -> tuple[dict[str, Any], float] | None:
    """The report and its mtime (file-server time), or None if there is none readable."""
    path = layout.host_report(host)
    with contextlib.suppress(OSError, ValueError):
        mtime = path.stat().st_mtime
        doc = json.loads(path.read_bytes())
        if isinstance(doc, dict):
            return doc, mtime
    return None


def host_id_clash(
    layout: Layout, identity: HostIdentity, server_now: float, live_s: float
) -> str | None:
    """Why another machine's live daemon uses our host id, or None."""
    found = read_host_report(layout, identity.host)
    if found is None:
        return None
    doc, mtime = found
    machine = doc.get("machine")
    age = server_now - mtime
    if machine in (None, identity.machine) or doc.get("stopped") is True or age > live_s:
        return None
    return (
        f"coordination.host_id {identity.host!r} is in use by a live daemon on another "
        f"machine (machine tag {machine}, pid {doc.get('pid')}, reported {age:.0f} s ago): "
        "give each Mac its own host_id in its config.toml, or leave it empty to use the "
        "Mac's name"
    )
