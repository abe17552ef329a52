"""Intake on a farm: daemons on separate mounts of one share (one Mac each), prompts files for
one nation/category enqueued at once through every host's mount, trial after trial; what each
batch planned, what is on the server, and what each `batch_done` said.

`intake_trials` only measures; tests/test_realshare.py asserts on the `IntakeTrials` it
returns, on the real SMB share (tests/realshare/) and on the Mac-like layer
(tests/maclike.py) alike.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import emif_cmd, run_emif, spawn, write_config

NATION, CATEGORY = "Norway", "family"
COUNT = 3  # images per file


def host_config(root: Path, work: Path, host: str, url: str, listing_s: float) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "paths": {"root": str(root)},
        "logging": {"file": f"logs/{host}.jsonl"},  # on the local disk
        "watch": {
            "mode": "poll",
            "rescan_interval_s": 0.5,
            "settle_s": 0.5,
            "listing_cache_s": listing_s,
        },
        "coordination": {
            "host_id": host,
            "heartbeat_s": 1.0,
            "lease_s": 40.0,
            "attribute_cache_s": 2.0,
        },
        "server": {"url": url, "max_attempts": 3, "backoff_s": 0.2, "connect_timeout_s": 2.0},
        "upscale": {"enabled": False},
        "segment": {"enabled": False},
    }
    extra = "[generate.payload]\nwidth = 128\nheight = 128\nsteps = 4\n"
    return write_config(work / f"{host}.toml", sections, extra)


@dataclass
class IntakeTrials:
    trials: int
    hosts: int
    seconds: float = 0.0
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)  # batch → first, last
    images: list[str] = field(default_factory=list)  # PNGs on the server
    made_by: dict[str, str] = field(default_factory=dict)  # PNG → its sidecar's `source`
    said: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # batch → batch_done
    unfinished: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    decided_by_server: int = 0  # plans whose start hint was stale: a create was refused

    def overlaps(self) -> list[str]:
        spans = sorted((first, last, batch) for batch, (first, last) in self.ranges.items())
        return [
            f"{a[2]} {a[0]}…{a[1]} and {b[2]} {b[0]}…{b[1]}"
            for a, b in itertools.pairwise(spans)
            if b[0] <= a[1]
        ]

    def failures(self) -> list[str]:
        asked = self.trials * self.hosts
        out = [f"overlapping indices: {o}" for o in self.overlaps()]
        if len(self.ranges) != asked:
            out.append(f"{len(self.ranges)} plans for {asked} files")
        out += [f"not finished: {b}" for b in self.unfinished]
        out += [f"rejected: {b}" for b in self.rejected]
        for batch, (first, last) in sorted(self.ranges.items()):
            names = [f"{NATION}_{CATEGORY}_{i}_1.png" for i in range(first, last + 1)]
            wrong = [n for n in names if self.made_by.get(n) != batch]
            if wrong:
                out.append(f"{batch}: images missing or not its own: {wrong}")
            said = self.said.get(batch, [])
            if len(said) != 1:
                out.append(f"{batch}: batch_done said {len(said)} times")
            elif (said[0]["done"], said[0]["failed"]) != (len(names) - len(wrong), len(wrong)):
                out.append(
                    f"{batch}: batch_done says done {said[0]['done']}, failed "
                    f"{said[0]['failed']}; {len(names) - len(wrong)} of its images exist"
                )
        if len(self.images) != asked * COUNT:
            out.append(f"{len(self.images)} images on the server for {asked * COUNT} asked")
        return out

    def summary(self) -> str:
        return (
            f"{self.trials} trials × {self.hosts} hosts in {self.seconds:.0f} s: "
            f"{len(self.ranges)} plans ({self.decided_by_server} moved on by creates the server "
            f"refused), {len(self.overlaps())} overlaps, "
            f"{len(self.images)} images for {self.trials * self.hosts * COUNT} asked"
        )


def intake_trials(
    roots: dict[str, Path],
    server_root: Path,
    work: Path,
    url: str,
    *,
    trials: int,
    listing_s: float,
    trial_timeout: float = 300.0,
) -> IntakeTrials:
    """Daemons on `roots` (host → its mount of one share; `server_root` is the share as the
    server holds it), `trials` rounds of one file per host enqueued at once."""
    work.mkdir(parents=True, exist_ok=True)
    configs = {h: host_config(root, work, h, url, listing_s) for h, root in roots.items()}
    first = next(iter(configs.values()))
    init = run_emif("init", str(next(iter(roots.values()))), "--config", str(first))
    assert init.returncode == 0, init.stderr
    out = IntakeTrials(trials, len(roots))
    started = time.monotonic()
    daemons = {
        h: spawn(emif_cmd("run", "--no-progress", "--config", str(c)), work / f"{h}.stderr")
        for h, c in configs.items()
    }
    try:
        for trial in range(trials):
            names = _enqueue_at_once(configs, work, trial)
            deadline = time.monotonic() + trial_timeout
            while not all(_ended(server_root, n) for n in names):
                if time.monotonic() > deadline:
                    out.unfinished += [n for n in names if not _ended(server_root, n)]
                    break
                time.sleep(0.2)
    finally:
        for proc in daemons.values():
            proc.send_signal(signal.SIGTERM)
        for proc in daemons.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    out.seconds = time.monotonic() - started
    _collect(out, server_root, work)
    return out


def _enqueue_at_once(configs: dict[str, Path], work: Path, trial: int) -> list[str]:
    names, procs = [], []
    for host, cfg in configs.items():
        name = f"t{trial:02d}-{host}.json"
        job = {"nation": NATION, "category": CATEGORY, "count": COUNT}
        job["prompt"] = f"a family, trial {trial}, from {host}"
        (work / name).write_text(json.dumps({"jobs": [job]}), encoding="utf-8")
        procs.append(subprocess.Popen(emif_cmd("enqueue", str(work / name), "--config", str(cfg))))
        names.append(name)
    assert [p.wait(120) for p in procs] == [0] * len(procs)
    return names


def _ended(server_root: Path, name: str) -> bool:
    queue = server_root / "queue"
    return (queue / "done" / name).exists() or (queue / "rejected" / name).exists()


def _collect(out: IntakeTrials, server_root: Path, work: Path) -> None:
    for plan in (server_root / ".emif" / "jobs").glob("*.plan.json"):
        doc = json.loads(plan.read_text(encoding="utf-8"))
        [job] = doc["jobs"]
        out.ranges[doc["source"]] = (job["first"], job["first"] + job["count"] - 1)
    folder = server_root / "GENERATIONS" / NATION / CATEGORY
    if folder.is_dir():
        for png in sorted(folder.glob("*.png")):
            out.images.append(png.name)
            sidecar = png.with_suffix(".json")
            doc = json.loads(sidecar.read_text()) if sidecar.exists() else {}
            out.made_by[png.name] = str(doc.get("source"))
    out.rejected = sorted(p.name for p in (server_root / "queue" / "rejected").glob("t*.json"))
    for path in sorted((work / "logs").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "batch_done":
                out.said.setdefault(event["file"], []).append(event)
            if event.get("event") == "prompts_accepted" and event.get("taken_meanwhile"):
                out.decided_by_server += 1
