"""One host's intake of one prompts file, for the race test (a real process per host):

    python -m tests.intake_race ROOT HOST FILE GO

Waits until GO exists (so two processes start together), then accepts FILE from queue/
and plans it under the share's intake lock, retrying while the other host holds it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from emif_daemon.intake.allocation import intake_lock
from emif_daemon.intake.inbox import Inbox
from emif_daemon.intake.planning import Expansion
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import Layout


def main() -> int:
    root, host, name, go = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    layout = Layout(root)
    me = HostIdentity.current(host)
    clock = ServerClock(layout.clock, f"{host}.{me.pid}")
    box = Inbox(
        layout,
        Expansion("{prompt}", "", {}),
        lambda _e, _d: None,
        lock=lambda: intake_lock(layout, clock, me),
        now=clock.now,
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
