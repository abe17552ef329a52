"""Every `emif` command, the module that holds it and one line on what it does.

Modules are imported only for the command that runs (after pip's `commands/__init__.py`), so
`emif status` never loads the HTTP client, the image code or the gallery's templates, and
`emif --help` loads none of them.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandInfo:
    module: str  # under emif_daemon.cli
    summary: str


@dataclass(frozen=True)
class Command:
    """What a command module gives for each of its commands."""

    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def no_arguments(_parser: argparse.ArgumentParser) -> None:
    """For commands that take nothing but --config."""


COMMANDS: dict[str, CommandInfo] = {
    "init": CommandInfo(
        "setup", "set up a new shared root (folders and marker) once; check the share is mounted"
    ),
    "run": CommandInfo("run", "run the daemon in the foreground"),
    "status": CommandInfo("watch", "pending, working, done and failed items per stage"),
    "validate": CommandInfo("batches", "check a prompts file; exit 1 if it has problems"),
    "check": CommandInfo("setup", "can the servers do what the recipes say? exit 1 if not"),
    "enqueue": CommandInfo("batches", "copy a prompts file into queue/ safely"),
    "retry": CommandInfo("batches", "make failed items pending again"),
    "plan": CommandInfo("batches", "what a prompts file would make: names, seeds, payloads"),
    "cancel": CommandInfo("batches", "stop making a batch's images (items in hand finish)"),
    "failures": CommandInfo("watch", "every failed item with its reason"),
    "report": CommandInfo("watch", "totals from the metrics files"),
    "launchd": CommandInfo("setup", "install, uninstall or print the LaunchAgent"),
    "logs": CommandInfo("watch", "the JSON log as readable lines"),
    "pause": CommandInfo("control", "every host finishes its item in hand, then claims nothing"),
    "resume": CommandInfo("control", "undo emif pause"),
    "gallery": CommandInfo("dataset", "write the static gallery under <root>/gallery/"),
    "export": CommandInfo("dataset", "metadata.jsonl/.csv and a data-set card for the images"),
}


def load(name: str) -> Command:
    """The command `name`, importing only its module."""
    module = importlib.import_module(f"emif_daemon.cli.{COMMANDS[name].module}")
    commands: dict[str, Command] = module.COMMANDS
    return commands[name]
