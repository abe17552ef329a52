"""What every `emif` command module shares: exit codes and reading the config."""

from __future__ import annotations

import argparse

from .config import Config, load_config, resolve_config_path

EXIT_OK = 0
EXIT_FAILED = 1  # some items failed, a file is invalid
EXIT_USAGE = 2  # bad config or arguments, or not possible on this system


def config_of(args: argparse.Namespace) -> Config:
    """`--config PATH`, else `$EMIF_CONFIG`, else ./config.toml; ConfigError if invalid."""
    return load_config(resolve_config_path(getattr(args, "config", None)))
