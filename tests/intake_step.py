"""One round of the daemon's intake on a root, as a process of its own (the crash tests):

    python -m tests.intake_step CONFIG

`Inbox.step()` once, as the generate stage runs it before each round: half-done moves put
back, settled queue files accepted and planned under the intake lock, fixes finished.
"""

from __future__ import annotations

import sys
from pathlib import Path

from emif_daemon.config.schema import load_config
from emif_daemon.intake.inbox import Inbox
from emif_daemon.intake.planning import Expansion
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import Layout
from emif_daemon.share.watch import Settler


def main() -> int:
    cfg = load_config(Path(sys.argv[1]))
    layout = Layout(cfg.paths.root)
    me = HostIdentity.current("intake-step")
    clock = ServerClock(layout.clock, f"{me.host}.{me.machine}.{me.pid}")
    box = Inbox.on_share(
        layout,
        Expansion.of(cfg.generate),
        lambda _e, _d: None,
        clock=clock,
        identity=me,
        settler=Settler(0.0),
        relist_s=0.0,
    )
    box.step()
    clock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
