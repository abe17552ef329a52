"""Fixtures: temporary roots, the loopback sdapi server, FUSE and the real share, and the
autouse guards (no leaked thread, logging reset). Helpers are in tests/helpers.py."""

from __future__ import annotations

import inspect
import logging
import os
import re
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
from tests.helpers import serving
from tests.maclike import fuse_problem
from tests.realshare import RealShare, ShareUnavailable, free_loopback_address

REPO = Path(__file__).resolve().parent.parent


# -- the slow marker: one rule ----------------------------------------------------------------
# A test is slow when it starts a real process (a daemon, `emif`, a browser, the segment
# model's child) or mounts a file system: in its own body, in a fixture it uses, or in a
# function of the tests' modules that either calls. `pytest -m "not slow"` leaves them out.
SLOW_FIXTURES = frozenset({"fuse_ok", "real_share"})
SLOW_CALLS = re.compile(
    r"\b(spawn|run_emif|subprocess\.\w+|Popen|toy_cmd|tiny_cmd|real_run|SegmentStage|Browser)\("
)


def _ours(fn: Callable[..., Any]) -> list[Callable[..., Any]]:
    """`fn` and the functions of the tests' modules it names."""
    fn = inspect.unwrap(fn)
    found = [fn]
    for name in fn.__code__.co_names:
        g = fn.__globals__.get(name)
        if inspect.isfunction(g) and g.__module__.startswith("tests") and g is not fn:
            found.append(g)
    return found


def _starts_processes(item: pytest.Item) -> bool:
    if not isinstance(item, pytest.Function):
        return False
    if SLOW_FIXTURES & set(item.fixturenames):
        return True
    functions = _ours(item.function)
    for defs in item._fixtureinfo.name2fixturedefs.values():
        if defs[-1].func.__module__.startswith("tests"):
            functions += _ours(defs[-1].func)
    return any(SLOW_CALLS.search(inspect.getsource(f)) for f in functions)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _starts_processes(item):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root set up as `emif init` does (folders and marker): daemons wait for no share."""
    path = tmp_path / "root"
    init_root(Layout(path), "test")
    return path


@pytest.fixture
def sdapi() -> Iterator[sdapi_server.SdapiHTTPServer]:
    with serving("drawthings") as server:
        yield server


# -- FUSE and a real SMB share (tests/maclike.py, tests/realshare/) ------------------------------


@pytest.fixture(scope="session")
def fuse_ok(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip, saying why, where FUSE file systems cannot be mounted (no /dev/fuse, no libfuse 2,
    not allowed to mount): the rest of the suite still runs."""

    problem = fuse_problem(tmp_path_factory.mktemp("fuse-probe"))
    if problem:
        pytest.skip(f"cannot mount FUSE file systems here: {problem}")


@pytest.fixture(scope="session")
def real_share(fuse_ok: None) -> Iterator[Any]:
    """Samba on a loopback address and three smbnetfs mounts of its share (one per host), set up
    once per session and torn down at its end; skips where the machine cannot run them."""

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
