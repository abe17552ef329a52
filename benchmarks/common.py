"""Shared by the benchmarks: realistic PNG answers, the loopback server, a daemon run."""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "benchmarks" / ".cache"
sys.path.insert(0, str(REPO))

from emif_daemon.share.layout import Layout  # noqa: E402
from emif_daemon.share.root_marker import init_root  # noqa: E402
from tests import sdapi_server  # noqa: E402

PASSES = [
    {"upscaler": "4x_ultrasharp_f16.ckpt", "upscaler_scale": 2, "strength": 0.0},
    {"strength": 0.3, "model": "juggernaut_xl_v9_q6p_q8p.ckpt"},
]


def photo_png(size: int) -> bytes:
    """A PNG that compresses like a photograph (smooth shapes plus fine grain), cached.

    The same picture at every size, so an upscale pass's answer resembles its input, as the
    daemon checks a real one does."""
    path = CACHE / f"photo_v2_{size}.png"
    if path.exists():
        return path.read_bytes()
    shapes = np.random.default_rng(48).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    low = Image.fromarray(shapes)
    base = np.asarray(low.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = np.random.default_rng(size).integers(-6, 7, (size, size, 3), dtype=np.int16)
    img = Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def start_server(latency: float) -> sdapi_server.SdapiHTTPServer:
    server, _thread = sdapi_server.start("drawthings", latency=latency)
    server.state.fixed_images = {(1024, 1024): photo_png(1024), (2048, 2048): photo_png(2048)}
    return server


def fresh_root(name: str) -> Path:
    """An empty root, set up as `emif init` does."""
    root = CACHE / "runs" / name
    shutil.rmtree(root, ignore_errors=True)
    init_root(Layout(root), "bench")
    return root


def prompts_doc(images: int) -> dict[str, Any]:
    return {"jobs": [{"nation": "Bench", "category": "family", "prompt": "p", "count": images}]}


def daemon_config(root: Path, url: str, **extra: Any) -> Path:
    lines = [
        "[paths]",
        f'root = "{root}"',
        "[server]",
        f'url = "{url}"',
        "[generate.payload]",
        "width = 1024",
        "height = 1024",
        "[upscale]",
        "expect_size = [2048, 2048]",
    ]
    for p in PASSES:
        lines.append("[[upscale.passes]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in p.items()]
    lines += ["[segment]", "enabled = false", "[watch]", 'mode = "auto"', "settle_s = 2"]
    for section, values in extra.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = root.parent / f"{root.name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_measured(cmd: list[str]) -> tuple[int, float, float, float]:
    """Run a command; (exit code, wall s, CPU s of the process, peak RSS MB)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def server_window(server: sdapi_server.SdapiHTTPServer) -> tuple[float, float, int]:
    """(busy seconds, wall seconds from first request in to last answer out, requests)."""
    gens = server.state.generations()
    if not gens:
        return 0.0, 0.0, 0
    busy = sum(r.finished - r.started for r in gens)
    return busy, max(r.finished for r in gens) - min(r.started for r in gens), len(gens)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"


def run_way(way: str, images: int, service: float, *, gallery: bool = False) -> dict[str, float]:
    """Push `images` through generate + 2 passes, by the daemon or the original scripts,
    against a fresh server; returns the client's CPU/wall/RSS and the server's window."""
    server = start_server(service)
    try:
        root = fresh_root(f"{way}-{service:g}")
        if way == "baseline":
            cmd = [sys.executable, str(REPO / "benchmarks" / "baseline_scripts.py")]
            cmd += [server.url, str(root), str(images)]
        else:
            (root / "queue").mkdir(exist_ok=True)
            (root / "queue" / "bench.json").write_text(json.dumps(prompts_doc(images)))
            cfg = daemon_config(root, server.url, gallery={"enabled": gallery})
            cmd = [sys.executable, "-m", "emif_daemon.cli", "run", "--once", "--config", str(cfg)]
        code, wall, cpu, rss = run_measured(cmd)
        if code != 0:
            raise SystemExit(f"{way} exited {code}; see {root}")
        busy, window, requests = server_window(server)
        return {"cpu": cpu, "wall": wall, "rss": rss, "busy": busy, "window": window,
                "requests": requests}  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
