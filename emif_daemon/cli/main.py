"""`emif`: commands → exit codes (docs/architecture.md#the-command-line).

Only the module of the command that runs is imported (cli/commands.py). `--config` is taken
before or after the command name.
"""

from __future__ import annotations

import argparse
import os
import sys

from emif_daemon import __version__, exit_codes
from emif_daemon.cli.commands import COMMANDS, load
from emif_daemon.errors import ConfigError

CONFIG_HELP = "config file (default: $EMIF_CONFIG, else ./config.toml)"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Every command is listed; only the one `argv` names gets its arguments (and its
    module imported)."""
    parser = argparse.ArgumentParser(
        prog="emif", description="Unattended txt2img → upscale → Segment Anything pipeline."
    )
    parser.add_argument("--version", action="version", version=f"emif-daemon {__version__}")
    parser.add_argument("--config", help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, info in COMMANDS.items():
        p = sub.add_parser(name, help=info.summary, description=info.summary)
        # SUPPRESS: a --config before the command name is kept when none follows it
        p.add_argument("--config", help=CONFIG_HELP, default=argparse.SUPPRESS)
        if name == chosen:
            command = load(name)
            command.arguments(p)
            p.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"emif: configuration error in {exc.path or 'arguments'}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return exit_codes.USAGE
    except KeyboardInterrupt:
        return exit_codes.FAILED
    except BrokenPipeError:
        # `emif status | head`: the reader left; say nothing more (and nothing at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
