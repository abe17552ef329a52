"""Is the server ever waiting for us? (target: busy ≥ 98 % of the wall time.)

A loopback sdapi server with a fixed service time answers real-size PNGs (1024² for
txt2img, 2048² for the upscale passes). 50 images go through generate and two upscale
passes, once through the daemon and once through the original sequential scripts.
Wall time runs from the first request reaching the server to the last answer leaving it;
the server counts as busy from the moment a request has arrived until its answer is
ready to send (parsing, generating, encoding), idle while bytes travel or it waits.

    python benchmarks/bench_server_busy.py [--images 50] [--service 0.5 2]
"""

from __future__ import annotations

import argparse
import sys

from common import machine, run_way


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
        for name, way in (("emif-daemon", "daemon"), ("original scripts", "baseline")):
            r = run_way(way, args.images, service)
            print(
                f"| {service:g} s | {name} | {r['requests']} | {r['window']:.1f} | "
                f"{r['busy'] / r['window']:.1%} | {args.images / r['window'] * 60:.1f} |",
                flush=True,
            )
    print()
    print("target: the server busy ≥ 98 % of the wall time with emif-daemon")
    return 0


if __name__ == "__main__":
    sys.exit(main())
