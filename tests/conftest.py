"""Shared fixtures: temporary roots, config files, the loopback sdapi server, guards."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from emif_daemon.share.layout import Layout
from emif_daemon.share.root_marker import init_root
from tests import sdapi_server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """A test must not leave threads running, daemon threads included: every thread the
    daemon starts is one, and each must be stopped and joined at shutdown. Threads get a
    few seconds to end (a loopback server's handler finishing its answer)."""
    before = set(threading.enumerate())
    yield

    def leftovers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]

    deadline = time.monotonic() + 5
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leftovers(), f"threads left running: {leftovers()}"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    root = logging.getLogger("emif")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    structlog.reset_defaults()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]], extra: str = "") -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def fast_sections(root: Path, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Config sections with short timings, so the tests poll briefly."""
    sections: dict[str, dict[str, Any]] = {
        "paths": {"root": str(root)},
        "watch": {"mode": "poll", "rescan_interval_s": 0.1, "settle_s": 0.0},
        "coordination": {"heartbeat_s": 0.2, "lease_s": 30.0, "attribute_cache_s": 0.0},
        "server": {"max_attempts": 3},
        "segment": {"enabled": False},
    }
    for key, values in overrides.items():
        sections.setdefault(key, {}).update(values)
    return sections


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root set up as `emif init` does (folders and marker): daemons wait for no share."""
    path = tmp_path / "root"
    init_root(Layout(path), "test")
    return path


def free_port() -> int:
    """A loopback port nobody listens on (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(mode: str = "drawthings", latency: float = 0.0, port: int = 0) -> Iterator[Any]:
    """A loopback sdapi server for the length of a `with` block."""
    server, thread = sdapi_server.start(mode, latency, port)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def sdapi() -> Iterator[sdapi_server.SdapiHTTPServer]:
    with serving("drawthings") as server:
        yield server


def emif_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "emif_daemon.cli", *args]


def run_emif(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        emif_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )


def toy_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.toy_daemon", str(config), *args]


def spawn(cmd: list[str], stderr_to: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a process; its stderr goes to a file (a pipe nobody reads could block it)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    target = stderr_to or Path(tempfile.gettempdir()) / f"emif-test-{os.getpid()}.stderr"
    with open(target, "ab") as err:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)


def log_lines(root: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted((root / "logs").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            lines.append(json.loads(line))
    return lines


# -- FUSE and a real SMB share (tests/maclike.py, tests/realshare/) ------------------------------


@pytest.fixture(scope="session")
def fuse_ok(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip, saying why, where FUSE file systems cannot be mounted (no /dev/fuse, no libfuse 2,
    not allowed to mount): the rest of the suite still runs."""
    from tests.maclike import fuse_problem  # noqa: PLC0415 - only the FUSE tests need it

    problem = fuse_problem(tmp_path_factory.mktemp("fuse-probe"))
    if problem:
        pytest.skip(f"cannot mount FUSE file systems here: {problem}")


@pytest.fixture(scope="session")
def real_share(fuse_ok: None) -> Iterator[Any]:
    """Samba on a loopback address and three smbnetfs mounts of its share (one per host), set up
    once per session and torn down at its end; skips where the machine cannot run them."""
    from tests.realshare import RealShare, ShareUnavailable, free_loopback_address  # noqa: PLC0415

    base = Path(tempfile.gettempdir()) / f"emif-realshare-{os.getpid()}"
    share = RealShare(base, free_loopback_address())
    try:
        share.setup()
    except ShareUnavailable as exc:
        share.teardown()
        pytest.skip(f"no SMB share on this machine: {exc}")
    except BaseException:
        share.teardown()
        raise
    try:
        yield share
    finally:
        share.teardown()
