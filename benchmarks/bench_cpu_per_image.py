"""Daemon CPU per image vs the original scripts' (targets: at most 0.40 s per image with
every check on, and at least 5× less than the scripts, measured in the same run).

Both get the same real-size answers from a loopback server with no service time; the
CPU seconds are the whole client process's (its rusage), the server's are excluded. The
daemon runs with its defaults, so every check is on: the whole-image content check decodes
each txt2img answer and each pass's answer once (docs/servers.md#checks-after-each-answer).
The target is the pipeline's own work (gallery off); the gallery's thumbnails, a feature the
scripts never had, are measured in a row of their own.

    python benchmarks/bench_cpu_per_image.py [--images 50]
"""

from __future__ import annotations

import argparse
import sys

from common import machine, run_way


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    args = parser.parse_args()
    daemon = run_way("daemon", args.images, 0.0)
    with_gallery = run_way("daemon", args.images, 0.0, gallery=True)
    base = run_way("baseline", args.images, 0.0)
    print(f"machine: {machine()}; {args.images} images: 1024² txt2img + 2 passes to 2048²")
    print()
    print("| way | CPU s total | CPU s per image | wall s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    rows = (("emif-daemon", daemon), ("emif-daemon, gallery on", with_gallery),
            ("original scripts", base))  # fmt: skip
    for name, r in rows:
        print(
            f"| {name} | {r['cpu']:.2f} | {r['cpu'] / args.images:.3f} | {r['wall']:.1f} | "
            f"{r['rss']:.0f} |"
        )
    print()
    per_image = daemon["cpu"] / args.images
    print(f"daemon: {per_image:.3f} s of CPU per image (target ≤ 0.40 s); "
          f"{base['cpu'] / daemon['cpu']:.1f}× less than the scripts (target ≥ 5×); "
          f"with the gallery on {base['cpu'] / with_gallery['cpu']:.1f}×")  # fmt: skip
    print("(both totals include interpreter start-up and imports)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
