"""What every `emif` command module shares: reading the config, the stage list, a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emif_daemon.config.schema import Config, load_config, resolve_config_path
from emif_daemon.errors import ConfigError
from emif_daemon.share.layout import STAGES


def config_of(args: argparse.Namespace) -> Config:
    """`--config PATH`, else `$EMIF_CONFIG`, else ./config.toml; ConfigError if invalid."""
    return load_config(resolve_config_path(getattr(args, "config", None)))


def stage_list(text: str | None) -> list[str] | None:
    """`--stages generate,upscale` → the names; None when not given (every stage)."""
    if not text:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ConfigError(
            [f"--stages: unknown stage {', '.join(unknown)}; known: {', '.join(STAGES)}"]
        )
    return names


def read_file(path: Path) -> bytes | None:
    """The bytes of a file a person named, or None after saying why it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
        return None
