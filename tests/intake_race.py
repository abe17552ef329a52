"""One host's intake of one prompts file, for the race tests (a real process per host):

    python -m tests.intake_race ROOT HOST FILE GO [blind]

Waits until GO exists (so the processes start together), then accepts FILE from queue/
and plans it under the share's intake lock, retrying while another host holds it.

`blind` plays a host whose listings are as stale as they can be and that takes no lock: it
knows no plan, no image and no hint, so every blind host starts at index 1 at the same
moment, and only the file server's exclusive creates keep their indices apart.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from emif_daemon.intake import allocation, planning
from emif_daemon.intake.allocation import FolderUse, folder_key, intake_lock
from emif_daemon.intake.inbox import Inbox
from emif_daemon.intake.planning import Expansion
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import Layout


def know_nothing(_layout: Any, folders: set[tuple[str, str]], _plans: Any) -> Any:
    return {folder_key(*f): FolderUse() for f in folders}


def main() -> int:
    root, host, name, go = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    blind = sys.argv[5:] == ["blind"]
    layout = Layout(root)
    me = HostIdentity.current(host)
    clock = ServerClock(layout.clock, f"{host}.{me.pid}")

    def lock() -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext(True) if blind else intake_lock(layout, clock, me)

    if blind:
        setattr(planning, "index_use", know_nothing)  # noqa: B010
        setattr(allocation, "_read_hint", lambda _folder: 0)  # noqa: B010
    box = Inbox(
        layout, Expansion("{prompt}", "", {}), lambda _e, _d: None, lock=lock, now=clock.now
    )
    while not go.exists():
        time.sleep(0.001)
    box.take(layout.queue / name)
    deadline = time.monotonic() + 30
    while box._accepting and time.monotonic() < deadline:  # the other host held the lock
        box.plan_waiting()
        time.sleep(0.005)
    clock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
