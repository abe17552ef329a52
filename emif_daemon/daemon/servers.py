"""The sdapi servers as the config names them: one `Server` per URL for a running daemon,
and `emif check`, which asks each stage's server whether it can do what the recipes say."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence

from emif_daemon.config.schema import Config, ServerConfig
from emif_daemon.errors import ServerUnavailable, StageUnavailable
from emif_daemon.servers.preflight.check import check, pass_uses
from emif_daemon.servers.preflight.checklist import Use
from emif_daemon.servers.sdapi import Server


def server_auth(cfg: ServerConfig) -> tuple[str, str] | None:
    """HTTP basic auth for every request; None when no user is set."""
    return (cfg.api_user, cfg.api_password) if cfg.api_user else None


class ServerPool:
    """One `Server` per URL and daemon, so stages that share a server share its request
    limit and its outage log."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg.server
        self._servers: dict[str, Server] = {}
        self._lock = threading.Lock()
        self._probes: list[threading.Thread] = []

    def get(self, url: str) -> Server:
        with self._lock:
            if url not in self._servers:
                self._servers[url] = Server(
                    url,
                    connect_timeout=self._cfg.connect_timeout_s,
                    read_timeout=self._cfg.read_timeout_s,
                    slots=self._cfg.max_concurrent,
                    auth=server_auth(self._cfg),
                )
            return self._servers[url]

    def probe_in_background(self) -> None:
        """Ask each server what it is once at start-up, so a user who has not turned on the
        API server reads `server_unreachable` at once, not when the first file arrives."""

        def probe(server: Server) -> None:
            with contextlib.suppress(ServerUnavailable):
                server.probe()

        for server in list(self._servers.values()):
            thread = threading.Thread(target=probe, args=(server,), name="probe", daemon=True)
            thread.start()
            self._probes.append(thread)

    def join_probes(self, timeout: float) -> None:
        """At shutdown: a probe is one short GET; a server that hangs is not waited for."""
        deadline = time.monotonic() + timeout
        for thread in self._probes:
            thread.join(max(0.0, deadline - time.monotonic()))


def check_config(
    cfg: Config, stages: Sequence[str], *, allow_unverified: bool = False
) -> tuple[list[str], bool]:
    """`emif check`: a line per problem (and warning) of each stage, and whether all is well:
    no problem, and every name verified unless `allow_unverified` (--allow-unverified)."""
    uses = {
        "generate": (cfg.server.url, [Use("generate", cfg.generate.payload, "txt2img")]),
        "upscale": (cfg.upscale_url, pass_uses(cfg.upscale.passes)),
    }
    lines: list[str] = []
    ok = True
    for stage in (s for s in stages if s in uses):
        url, stage_uses = uses[stage]
        server = Server(
            url,
            connect_timeout=cfg.server.connect_timeout_s,
            read_timeout=cfg.server.read_timeout_s,
            auth=server_auth(cfg.server),
        )
        try:
            found = check(server, stage_uses, models_folders=cfg.server.models_folders)
        except ServerUnavailable as exc:
            lines.append(f"{stage}: {exc}; start the server (or fix server.url) and check again")
            ok = False
            continue
        except StageUnavailable as exc:  # it answers, but refuses our credentials
            lines.append(f"{stage}: {exc}")
            ok = False
            continue
        lines += [f"{stage}: warning: {w}" for w in found.warnings]
        lines += [f"{stage}: {u}" for u in found.unverified]
        lines += [f"{stage}: {p}" for p in found.problems]
        passed = not found.problems and (allow_unverified or not found.unverified)
        ok = ok and passed
        if passed:
            unsure = f", {len(found.unverified)} name(s) not verified" if found.unverified else ""
            lines.append(f"{stage}: ok ({url}{unsure})")
    return lines, ok
