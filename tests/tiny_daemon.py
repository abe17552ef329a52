"""The real daemon with the tiny test model in its segment stage (Meta's weights cannot be
downloaded here): `python -m tests.tiny_daemon CONFIG [--once]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emif_daemon.config import load_config
from emif_daemon.daemon import Runtime, enabled_stages, host_id, run_daemon
from emif_daemon.engine import Stage
from emif_daemon.logs import configure_logging
from emif_daemon.stages import build
from emif_daemon.stages.segment import SegmentStage

TINY = "tests.tiny_sam:build"


def stages(rt: Runtime) -> list[Stage]:
    out: list[Stage] = []
    for name in enabled_stages(rt.cfg, None):
        out.append(SegmentStage(rt, builder=TINY) if name == "segment" else build(name, rt))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args()
    cfg = load_config(Path(args.config))
    host = host_id(cfg)
    configure_logging(host=host, file=cfg.paths.root / "logs" / f"{host}.jsonl", stderr=False)
    return run_daemon(cfg, once=args.once, stage_factory=stages, config_path=args.config)


if __name__ == "__main__":
    sys.exit(main())
