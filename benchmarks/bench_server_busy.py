"""Is the server ever waiting for us? (SPEC §10: busy ≥ 98 % of the wall time.)

A loopback sdapi server with a fixed service time answers real-size PNGs (1024² for
txt2img, 2048² for the upscale passes). 50 images go through generate and two upscale
passes, once through the daemon and once through the original sequential scripts.
Wall time runs from the first request reaching the server to the last answer leaving it.

    python benchmarks/bench_server_busy.py [--images 50] [--service 0.5 2]
"""

from __future__ import annotations

import argparse
import json
import sys

from common import (
    REPO,
    daemon_config,
    fresh_root,
    machine,
    prompts_doc,
    run_measured,
    server_window,
    start_server,
)


def run_daemon(images: int, service: float) -> tuple[float, float, int]:
    server = start_server(service)
    try:
        root = fresh_root(f"busy-daemon-{service}")
        (root / "queue").mkdir()
        (root / "queue" / "bench.json").write_text(json.dumps(prompts_doc(images)))
        cfg = daemon_config(root, server.url)
        code, _wall, _cpu, _rss = run_measured(
            [sys.executable, "-m", "emif_daemon.cli", "run", "--once", "--config", str(cfg)]
        )
        if code != 0:
            raise SystemExit(f"daemon exited {code}; see {root}/logs")
        return server_window(server)
    finally:
        server.shutdown()
        server.server_close()


def run_baseline(images: int, service: float) -> tuple[float, float, int]:
    server = start_server(service)
    try:
        root = fresh_root(f"busy-baseline-{service}")
        script = str(REPO / "benchmarks" / "baseline_scripts.py")
        code, _wall, _cpu, _rss = run_measured(
            [sys.executable, script, server.url, str(root), str(images)]
        )
        if code != 0:
            raise SystemExit(f"baseline exited {code}")
        return server_window(server)
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--service", type=float, nargs="+", default=[0.5, 2.0])
    args = parser.parse_args()
    print(f"machine: {machine()}; {args.images} images, generate + 2 upscale passes")
    print()
    print("| service time | way | requests | wall s | server busy | images/min |")
    print("|---:|---|---:|---:|---:|---:|")
    for service in args.service:
        for name, run in (("emif-daemon", run_daemon), ("original scripts", run_baseline)):
            busy, wall, requests = run(args.images, service)
            print(
                f"| {service:g} s | {name} | {requests} | {wall:.1f} | {busy / wall:.1%} | "
                f"{args.images / wall * 60:.1f} |",
                flush=True,
            )
    print()
    print("target: the server busy ≥ 98 % of the wall time with emif-daemon")
    return 0


if __name__ == "__main__":
    sys.exit(main())
