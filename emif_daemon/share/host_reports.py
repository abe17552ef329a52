"""Each daemon's report of itself (`.emif/hosts/<host>.json`), and the check that no two
machines run under one host id (docs/protocol.md#identity).

Two Macs configured with the same `coordination.host_id` would write one report, one log
and one metrics folder, and people could not tell their work apart; each daemon therefore
refuses to start, or stops, when a live daemon of another machine reports under its id.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from emif_daemon.share.atomic import atomic_write_json
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import Layout


@dataclass(frozen=True)
class HostState:
    """What one daemon says of itself (`.emif/hosts/<host>.json`, read by `emif status`)."""

    host: str
    stopped: bool
    unavailable: Mapping[str, str] = field(default_factory=dict)
    stages: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "stopped": self.stopped,
            "unavailable": dict(self.unavailable),
            "stages": {name: dict(counts) for name, counts in self.stages.items()},
        }


def write_host_report(layout: Layout, identity: HostIdentity, state: HostState) -> None:
    atomic_write_json(
        layout.host_report(state.host),
        {
            **state.to_json(),
            "machine": identity.machine,
            "pid": identity.pid,
            "updated": utc_stamp(),
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
