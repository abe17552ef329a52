"""What the tests share: configs, a loopback sdapi server, processes, logs, deadlines.

Fixtures are in conftest.py; everything else a test module needs from another lives here, so
no test module imports another.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests import sdapi_server

REPO = Path(__file__).resolve().parent.parent


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


def emif_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "emif_daemon.cli", *args]


def run_emif(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        emif_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )


def toy_cmd(config: Path, *args: str) -> list[str]:
    """The tiny daemon with its toy stage (tests/tiny_daemon.py)."""
    return [sys.executable, "-m", "tests.tiny_daemon", str(config), "--toy", *args]


def tiny_cmd(config: Path, *args: str) -> list[str]:
    """The tiny daemon with the real stages and a random-weights Segment Anything."""
    return [sys.executable, "-m", "tests.tiny_daemon", str(config), *args]


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


# -- a generate + upscale pipeline against the Draw Things test server -----------------------

SMALL = {"width": 128, "height": 128, "steps": 4, "loras": [], "controls": []}  # DT minimum: 128
PASSES = [
    {"upscaler": "4x_ultrasharp_f16.ckpt", "upscaler_scale": 2, "strength": 0.0},
    {"strength": 0.3, "model": "juggernaut_xl_v9_q6p_q8p.ckpt", "upscaler": None},
]


def pipeline_config(root: Path, url: str, *, upscale: bool = True) -> Path:
    sections = fast_sections(
        root,
        server={
            "url": url,
            "max_attempts": 3,
            "connect_timeout_s": 1.0,
            "read_timeout_s": 30.0,
            "backoff_s": 0.1,
        },
    )
    extra = "[generate.payload]\n" + "".join(
        f"{k} = {json.dumps(v) if v is not None else '[]'}\n" for k, v in SMALL.items()
    )
    extra += f"[upscale]\nenabled = {str(upscale).lower()}\nexpect_size = [256, 256]\n"
    for p in PASSES:
        extra += "[[upscale.passes]]\n" + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in p.items() if v is not None
        )
    return write_config(root.parent / "config.toml", sections, extra)


def pngs(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
