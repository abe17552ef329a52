"""Before a stage's first request, and as `emif check`: can the server do what the recipes say?

Every model, refiner, upscaler, ControlNet, sampler and script a recipe names must exist on the
server, every key must be one the server takes, and a recipe written for the other server is
refused. Both servers answer HTTP 200 while silently dropping much of that
(docs/servers.md#preflight), so a problem found here turns the stage off with one message
naming the file, the key, the name and what to do, instead of a week of wrong images.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from emif_daemon.errors import StageUnavailable
from emif_daemon.logs import get_logger
from emif_daemon.servers.dialects import Recipe, guess_kind
from emif_daemon.servers.preflight.a1111 import check_a1111
from emif_daemon.servers.preflight.checklist import Findings, Use
from emif_daemon.servers.preflight.drawthings import check_drawthings
from emif_daemon.servers.sdapi import Server


def pass_endpoint(template: Mapping[str, Any]) -> str:
    """An upscale pass's endpoint: `endpoint = "extras"` in its table, else img2img."""
    return str(template.get("endpoint", "img2img"))


def pass_uses(passes: Sequence[Mapping[str, Any]]) -> list[Use]:
    return [
        Use(f"upscale pass {n}", _sendable(p), pass_endpoint(p)) for n, p in enumerate(passes, 1)
    ]


def _sendable(template: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pass table without `endpoint`, which is ours, not the server's."""
    if "endpoint" not in template:
        return template
    rest = {k: v for k, v in template.items() if k != "endpoint"}
    if isinstance(template, Recipe):
        return Recipe(rest, key=template.key, include=template.include)
    return rest


def is_local(url: str) -> bool:
    """Does the server run on this machine (so its models folder is ours to read)?"""
    host = (urlsplit(url).hostname or "").lower()
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname().lower()}
    names.add(socket.gethostname().split(".")[0].lower())
    return host in names or host.startswith("127.")


def check(server: Server, uses: Sequence[Use], *, models_folders: Sequence[str | Path]) -> Findings:
    """Ask the server what it has and compare with every use; raises ServerUnavailable when
    it cannot be reached and StageUnavailable when it refuses our credentials."""
    info = server.probe()
    found = Findings()
    for use in uses:
        if use.endpoint not in ("txt2img", "img2img", "extras"):
            found.problems.append(
                f'{use.where}: endpoint "{use.endpoint}" is not one of img2img, extras; '
                "fix the pass table"
            )
    if info.kind == "unknown":
        found.problems.append(
            f"server.url: {server.url} answered /sdapi/v1/options like neither Draw Things nor "
            "AUTOMATIC1111; check the URL and port"
        )
        return found
    for use in uses:
        written_for = guess_kind(use.payload)
        if written_for is not None and written_for != info.kind:
            found.problems.append(
                f"{use.where}: written for {_NAMES[written_for]} but {server.url} is "
                f"{_NAMES[info.kind]}; use a recipe in {_NAMES[info.kind]}'s keys"
            )
    if found.problems:
        return found
    if info.kind == "drawthings":
        folders, why = _folders(server.url, models_folders)
        check_drawthings(server, uses, found, folders, why)
    else:
        check_a1111(server, uses, found, local=is_local(server.url))
    return found


_NAMES = {"drawthings": "Draw Things", "a1111": "AUTOMATIC1111"}


def _folders(url: str, folders: Sequence[str | Path]) -> tuple[list[Path] | None, str]:
    """The readable models folders, or None and why files cannot be checked."""
    if not is_local(url):
        return None, (
            f"Draw Things runs on another machine ({url}), whose models folder this one cannot "
            "read; check the name in Draw Things there, then run `emif check "
            "--allow-unverified`"
        )
    readable = []
    for folder in folders:
        path = Path(folder).expanduser()
        try:
            next(path.iterdir(), None)
        except OSError:
            continue
        readable.append(path)
    if not readable:
        shown = ", ".join(str(f) for f in folders) or "(none)"
        return None, (
            f"no folder in server.models_folders ({shown}) can be read; set it to Draw Things' "
            "models folder (reading another app's container may need Full Disk Access for "
            "this Python), or check the name in Draw Things and run `emif check "
            "--allow-unverified`"
        )
    return readable, ""


class Preflight:
    """A stage's check before its first request: run once, its refusal remembered."""

    def __init__(
        self,
        stage: str,
        server: Server,
        uses: Sequence[Use],
        models_folders: Sequence[str | Path],
    ) -> None:
        self.stage = stage
        self.server = server
        self.uses = list(uses)
        self.models_folders = list(models_folders)
        self.refusal: str | None = None
        self._done = False
        self._lock = threading.Lock()
        self.log = get_logger()

    def ensure(self, before: Callable[[], None]) -> None:
        """Check once (calling `before` first: it raises to stop); raises StageUnavailable
        with every problem when the server cannot do what the recipes say."""
        with self._lock:
            if not self._done:
                before()
                try:
                    self._run()
                except StageUnavailable as exc:
                    self.refusal = str(exc)
                self._done = True
        if self.refusal is not None:
            raise StageUnavailable(self.refusal)

    def _run(self) -> None:
        found = check(self.server, self.uses, models_folders=self.models_folders)
        for warning in found.warnings:
            self.log.warning("preflight_warning", warning=warning)
        for line in found.unverified:  # once per name: this runs once per stage
            self.log.warning("preflight_unverified", warning=line)
        if found.app_values:
            self.log.info("app_settings_used", settings=found.app_values)
        if found.problems:
            self.refusal = " | ".join(found.problems)
        else:
            self.log.info("preflight_ok", server=self.server.url, checked=len(self.uses))
