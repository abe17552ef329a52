"""A prompts file of 100 000 small jobs: does the server stay busy? (target: ≥ 90 % over the
first 500 images against a 0.2 s server.)

The file is accepted and planned once; every round must cost the items it looks at, not a
walk over 100 000 pending items. The daemon runs the generate stage only; it is stopped
after the first 500 answers. Also printed: the daemon's RSS and how long acceptance took.

    python benchmarks/bench_big_file.py [--jobs 100000] [--items 500] [--service 0.2]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

import psutil
from common import REPO, daemon_config, fresh_root, machine, start_server


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--service", type=float, default=0.2)
    args = parser.parse_args()
    server = start_server(args.service)
    root = fresh_root("big-file")
    (root / "queue").mkdir(exist_ok=True)
    jobs = [
        {"nation": f"Nation{i % 1000}", "category": "family", "prompt": f"scene {i}"}
        for i in range(args.jobs)
    ]
    (root / "queue" / "big.json").write_text(json.dumps({"jobs": jobs}))
    cfg = daemon_config(root, server.url)
    cmd = [sys.executable, "-m", "emif_daemon.cli", "run", "--stages", "generate"]
    cmd += ["--config", str(cfg)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rss = 0.0
    try:
        while len(server.state.generations()) < args.items:
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited {proc.returncode}; see {root}")
            rss = max(rss, psutil.Process(proc.pid).memory_info().rss / 2**20)
            time.sleep(0.5)
        accepted = next(
            json.loads(line)
            for line in (root / "logs").glob("*.jsonl").__next__().read_text().splitlines()
            if '"prompts_accepted"' in line
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        server.shutdown()
        server.server_close()
    gens = sorted(server.state.generations(), key=lambda r: r.started)[: args.items]
    busy = sum(r.finished - r.started for r in gens)
    window = gens[-1].finished - gens[0].started
    print(f"machine: {machine()}; {args.jobs} jobs of 1 image, generate only")
    print()
    print("| jobs | images measured | service | wall s | server busy | daemon RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.jobs} | {len(gens)} | {args.service:g} s | {window:.1f} | "
        f"{busy / window:.1%} | {rss:.0f} |"
    )
    print()
    print(f"accepted {accepted['items']} items; run took {time.monotonic() - started:.0f} s")
    print("target: the server busy ≥ 90 % over the first 500 images")
    return 0 if busy / window >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
