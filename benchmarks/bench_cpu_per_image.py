"""Daemon CPU per image vs the original scripts' (SPEC §10: at least 10× less).

Both get the same real-size answers from a loopback server with no service time; the
CPU seconds are the whole client process's (its rusage), the server's are excluded.

    python benchmarks/bench_cpu_per_image.py [--images 50]
"""

from __future__ import annotations

import argparse
import json
import sys

from common import REPO, daemon_config, fresh_root, machine, prompts_doc, run_measured, start_server


def measure(images: int, baseline: bool) -> tuple[float, float, float]:
    server = start_server(0.0)
    try:
        root = fresh_root("cpu-baseline" if baseline else "cpu-daemon")
        if baseline:
            script = str(REPO / "benchmarks" / "baseline_scripts.py")
            cmd = [sys.executable, script, server.url, str(root), str(images)]
        else:
            (root / "queue").mkdir()
            (root / "queue" / "bench.json").write_text(json.dumps(prompts_doc(images)))
            cfg = daemon_config(root, server.url)
            cmd = [sys.executable, "-m", "emif_daemon.cli", "run", "--once", "--config", str(cfg)]
        code, wall, cpu, rss = run_measured(cmd)
        if code != 0:
            raise SystemExit(f"{cmd[1]} exited {code}")
        return cpu, wall, rss
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    args = parser.parse_args()
    daemon = measure(args.images, baseline=False)
    base = measure(args.images, baseline=True)
    print(f"machine: {machine()}; {args.images} images: 1024² txt2img + 2 passes to 2048²")
    print()
    print("| way | CPU s total | CPU s per image | wall s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for name, (cpu, wall, rss) in (("emif-daemon", daemon), ("original scripts", base)):
        print(f"| {name} | {cpu:.2f} | {cpu / args.images:.3f} | {wall:.1f} | {rss:.0f} |")
    print()
    print(f"ratio: {base[0] / daemon[0]:.1f}× less CPU per image (target ≥ 10×)")
    print("(both totals include interpreter start-up and imports)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
