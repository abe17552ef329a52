"""Several farm runs in a row on a real SMB share, as in the issue's "five runs in a row":

    .venv/bin/python -m tests.realshare.soak --runs 5 [--images 60] [--no-kill] [--cache on]

Each run: three daemons on three SMB client mounts of one Samba share (tests/realshare/setup.sh;
macsmb, which behaves like the Mac's client, unless --client smbnetfs),
a fresh folder on the share, `--images` images through generate and upscale, one daemon
SIGKILLed mid-run and restarted (unless --no-kill). Prints one table row per run and, for a run
that broke a guarantee, what broke and the first log line of each error; a run whose SMB client
died or hung is counted apart ("client failed"), since it says nothing about the daemon. Mounts
that died are remounted before the next run. Needs root and FUSE (as the tests do).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.realshare import RealShare, ShareUnavailable, free_loopback_address
from tests.realshare.farm import FarmRun, run_farm


def verdict(run: FarmRun, images: int, kill: bool) -> list[str]:
    """The guarantees a run broke; [] when it kept all of them."""
    problems = run.failures(images)
    if not kill and run.duplicates:
        problems.append(f"duplicate requests without any kill: {run.duplicates}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--no-kill", action="store_true", help="kill no daemon")
    parser.add_argument("--client", choices=("macsmb", "smbnetfs"), default="macsmb")
    parser.add_argument("--cache", choices=("on", "default", "off"), default="on", help="smbnetfs")
    parser.add_argument("--latency", type=float, default=0.25, help="server s per request")
    parser.add_argument("--deadline", type=float, default=300.0, help="s per run at most")
    parser.add_argument("--json", help="also write every run's figures here")
    parser.add_argument(
        "--raw-append",
        action="store_true",
        help="let the daemons' O_APPEND opens reach smbnetfs (tests/realshare/emif.py)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="emif-soak-"))
    base = Path(tempfile.gettempdir()) / f"emif-realshare-soak-{os.getpid()}"  # smbd must reach it
    share = RealShare(base, free_loopback_address(), client=args.client, cache=args.cache)
    kill = None if args.no_kill else "b"
    rows = []
    try:
        share.setup()
    except ShareUnavailable as exc:
        print(f"no SMB share on this machine: {exc}", file=sys.stderr)
        return 2
    try:
        caches = f"caches {args.cache}" if args.client == "smbnetfs" else "listings cached 2 s"
        print(f"{args.client} ×3 on Samba {share.addr}, {caches}, {args.images} images, ")
        print(f"kill {'one daemon' if kill else 'none'}; work in {work}\n")
        print(
            "| run | result | s | outputs | requests (txt2img/img2img) | duplicates "
            "(killed in flight / other) | partial | temp | stage_error | share_unavailable "
            "| claim_broken | dead mounts |"
        )
        print("|---|---|---:|---|---|---|---|---|---:|---:|---:|---|")
        for n in range(1, args.runs + 1):
            share.heal()
            top = f"soak-{os.getpid()}-{n}"
            (share.root("a") / top).mkdir()
            deadline = time.monotonic() + 30
            while not all((share.root(c) / top).is_dir() for c in share.clients):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{top} did not appear on every mount")
                time.sleep(0.1)
            run = run_farm(
                {c: share.root(c) / top for c in share.clients},
                share.server_dir / top,
                work / f"run-{n}",
                images=args.images,
                latency=args.latency,
                kill=kill,
                deadline_s=args.deadline,
                mount_problems=share.mount_problems,
                append_workaround=not args.raw_append,
            )
            problems = verdict(run, args.images, kill is not None)
            result = "ok" if not problems else "client failed" if run.dead_mounts else "BROKE"
            dups = run.duplicates
            in_flight = sum(n for k, n in dups.items() if k in run.in_flight)
            other = sum(n for k, n in run.unexplained_duplicates.items())
            total = {e: sum(c.values()) for e, c in run.events.items()}
            print(
                f"| {n} | {result} | {run.seconds:.0f} | {run.generations} + {run.upscales} | "
                f"{run.requests['txt2img']}/{run.requests['img2img']} | {in_flight} / {other} | "
                f"{len(run.partial)} | {len(run.temp_files)} | {total['stage_error']} | "
                f"{total['share_unavailable']} | {total['claim_broken']} | "
                f"{run.dead_mounts or ''} |",
                flush=True,
            )
            rows.append(
                {
                    "run": n,
                    "result": result,
                    "problems": problems,
                    "summary": run.summary(),
                    "excerpts": run.excerpts,
                }
            )
        print()
        for row in rows:
            if row["problems"]:
                print(f"run {row['run']} ({row['result']}):")
                for line in [*row["problems"], *row["excerpts"]]:
                    print(f"  {line}")
    finally:
        share.teardown()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    return 0 if all(r["result"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
