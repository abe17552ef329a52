"""A long run: do memory, descriptors, threads or CPU per image creep? (target: flat.)

2 000 generations and 2 000 upscales (two img2img passes each) through one daemon against a
loopback server with no service time and small images, so the run is about the daemon's
own bookkeeping. The daemon's RSS, open descriptors, threads and CPU time are sampled
every second; the table shows them at each fifth of the run, with the CPU spent per image
since the previous row.

    python benchmarks/bench_soak.py [--images 2000]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

import psutil
from common import REPO, daemon_config, fresh_root, machine, photo_png, start_server


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    server = start_server(0.0)
    server.state.fixed_images = {(256, 256): photo_png(256), (512, 512): photo_png(512)}
    root = fresh_root("soak")
    (root / "queue").mkdir(exist_ok=True)
    jobs = [{"nation": f"N{n}", "category": "family", "prompt": "p", "count": 100}
            for n in range(args.images // 100)]  # fmt: skip
    cfg = daemon_config(root, server.url)
    text = cfg.read_text().replace("width = 1024\nheight = 1024", "width = 256\nheight = 256")
    cfg.write_text(text.replace("expect_size = [2048, 2048]", "expect_size = [512, 512]"))
    cmd = [sys.executable, "-m", "emif_daemon.cli", "run", "--config", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = psutil.Process(proc.pid)
    (root / "queue" / "soak.json").write_text(json.dumps({"jobs": jobs}))
    total = args.images * 3  # one txt2img and two img2img requests per image
    samples: list[tuple[int, float, int, int, float]] = []
    started = time.monotonic()
    try:
        while True:
            done = len(server.state.generations())
            with daemon.oneshot():
                cpu = daemon.cpu_times()
                samples.append((done, daemon.memory_info().rss / 2**20, daemon.num_fds(),
                                daemon.num_threads(), cpu.user + cpu.system))  # fmt: skip
            if done >= total or proc.poll() is not None:
                break
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        server.shutdown()
        server.server_close()
    wall = time.monotonic() - started
    print(f"machine: {machine()}; {args.images} generations + {args.images} upscales "
          f"(256² → 2 passes → 512²), {wall:.0f} s")  # fmt: skip
    print()
    print("| requests done | RSS MB | fds | threads | CPU ms per request since last row |")
    print("|---:|---:|---:|---:|---:|")
    previous = samples[0]
    for fifth in range(1, 6):
        row = next((s for s in samples if s[0] >= total * fifth // 5), samples[-1])
        per = (row[4] - previous[4]) / max(1, row[0] - previous[0]) * 1000
        print(f"| {row[0]} | {row[1]:.0f} | {row[2]} | {row[3]} | {per:.1f} |")
        previous = row
    early = [s for s in samples if total // 5 <= s[0] < 2 * total // 5] or samples
    late = [s for s in samples if s[0] >= 4 * total // 5] or samples
    growth = max(s[1] for s in late) - max(s[1] for s in early)
    fds = max(s[2] for s in late) - max(s[2] for s in early)
    threads = max(s[3] for s in late) - max(s[3] for s in early)
    print()
    print(f"last fifth against the second (peaks): RSS {growth:+.1f} MB, fds {fds:+d}, "
          f"threads {threads:+d}")  # fmt: skip
    ok = samples[-1][0] >= total and growth < 20 and fds <= 2 and threads <= 0
    print("target: every request answered; RSS, fds and threads flat" + ("" if ok else ": FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
