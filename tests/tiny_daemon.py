"""The real daemon with the tiny test model in its segment stage (Meta's weights cannot be
downloaded here): `python -m tests.tiny_daemon CONFIG [--once]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emif_daemon.cli.run import EXIT_CODE
from emif_daemon.config.schema import load_config
from emif_daemon.daemon.wiring import StageKit, build_stages, enabled_stages, host_id, run_daemon
from emif_daemon.engine.stage import Stage
from emif_daemon.observe.log_setup import configure_logging

TINY = "tests.tiny_sam:build"


def stages(kit: StageKit) -> list[Stage]:
    return build_stages(kit, enabled_stages(kit.cfg, None), segment_builder=TINY)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args()
    cfg = load_config(Path(args.config))
    host = host_id(cfg)
    configure_logging(host=host, file=cfg.paths.root / "logs" / f"{host}.jsonl", stderr=False)
    return EXIT_CODE[run_daemon(cfg, once=args.once, stage_factory=stages, config_path=args.config)]


if __name__ == "__main__":
    sys.exit(main())
