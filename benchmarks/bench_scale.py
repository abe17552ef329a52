"""A large root: 100 000 images under GENERATIONS/, all already upscaled.

Measures the daemon's first discovery (< 5 s), `emif status` (< 2 s), idle CPU over 60 s
of `emif run` (< 1 % of a core) and its RSS without the segment model (< 200 MB).
The tree is made once and cached under benchmarks/.cache/.

    python benchmarks/bench_scale.py [--images 100000] [--idle-s 60]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
from common import CACHE, REPO, machine

sys.path.insert(0, str(REPO))
import contextlib

from emif_daemon.share.layout import Layout
from emif_daemon.share.root_marker import init_root
from tests.sdapi_server import make_png

NATIONS, CATEGORIES = 50, ("family", "working")


def build_tree(images: int) -> Path:
    root = CACHE / f"scale-{images}"
    marker = root / ".complete"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    png = make_png(8, 8)
    per_folder = images // (NATIONS * len(CATEGORIES))
    for n in range(NATIONS):
        for c in CATEGORIES:
            gen = root / "GENERATIONS" / f"Nation{n:02}" / c
            up = root / "UPSCALED_IMAGES" / f"Nation{n:02}" / c
            gen.mkdir(parents=True)
            up.mkdir(parents=True)
            for i in range(1, per_folder + 1):
                stem = f"Nation{n:02}_{c}_{i}_1"
                (gen / f"{stem}.png").write_bytes(png)
                (up / f"{stem}_upscaled_1.png").write_bytes(png)
    marker.touch()
    return root


def reset_state(root: Path) -> None:
    for name in (".emif", "logs", "metrics", "queue", "SEGMENTS"):
        shutil.rmtree(root / name, ignore_errors=True)


def events(root: Path) -> list[dict]:
    out = []
    for path in (root / "logs").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--idle-s", type=float, default=60.0)
    args = parser.parse_args()
    made = time.monotonic()
    root = build_tree(args.images)
    made = time.monotonic() - made
    reset_state(root)
    init_root(Layout(root), "bench")
    cfg = root.parent / f"scale-{args.images}.toml"
    cfg.write_text(
        f'[paths]\nroot = "{root}"\n[server]\nurl = "http://127.0.0.1:9"\n'
        "[[upscale.passes]]\nstrength = 0.3\n[segment]\nenabled = false\n"
        '[watch]\nmode = "poll"\n'  # rescans only: what a network volume gets
    )
    emif = [sys.executable, "-m", "emif_daemon.cli"]
    started = time.monotonic()
    proc = subprocess.Popen(
        [*emif, "run", "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not any(
            e["event"] == "first_scan" and e.get("stage") == "upscale" for e in events(root)
        ):
            if time.monotonic() - started > 120 or proc.poll() is not None:
                raise SystemExit("the daemon did not finish its first scan")
            time.sleep(0.05)
        first = time.monotonic() - started
        scan = next(
            e for e in events(root) if e["event"] == "first_scan" and e["stage"] == "upscale"
        )
        daemon = psutil.Process(proc.pid)
        time.sleep(2)  # let the other stages finish their first scan too
        cpu0 = sum(daemon.cpu_times()[:2])
        time.sleep(args.idle_s)
        idle = (sum(daemon.cpu_times()[:2]) - cpu0) / args.idle_s
        rss = daemon.memory_info().rss / 2**20
        status_times = []
        for _ in range(3):
            t = time.monotonic()
            out = subprocess.run(
                [*emif, "status", "--json", "--config", str(cfg)],
                cwd=REPO, capture_output=True, text=True, check=True,
            )  # fmt: skip
            status_times.append(time.monotonic() - t)
        counts = json.loads(out.stdout)["stages"]["upscale"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    print(
        f"machine: {machine()}; {args.images} images + as many upscales (tree made in {made:.0f} s)"
    )
    print()
    print("| measure | value | target |")
    print("|---|---:|---:|")
    print(f"| daemon start → first discovery done | {first:.2f} s | < 5 s |")
    print(f"| of which the upscale scan itself | {scan['seconds']:.2f} s | |")
    print(f"| `emif status --json` (median of 3, process included) | "
          f"{statistics.median(status_times):.2f} s | < 2 s |")  # fmt: skip
    print(f"| idle CPU over {args.idle_s:.0f} s of `emif run` | {idle:.2%} of a core | < 1 % |")
    print(f"| daemon RSS | {rss:.0f} MB | < 200 MB |")
    print()
    print(f"status saw upscale done={counts['done']} pending={counts['pending']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
