"""`emif status`: what every stage has pending, in work (by host), done and failed.

Reads only the root, so it answers the same from any machine. Work in progress is found
by looking for a claim only for items whose output is missing, so a root of 100 000 done
images costs three directory walks and no per-file reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emif_daemon.intake.plans import read_plans
from emif_daemon.intake.queue_files import is_prompts_name
from emif_daemon.observe.eta import eta_seconds, recent_rate
from emif_daemon.observe.metrics import read_rows
from emif_daemon.share.claims import CLAIM_SUFFIX, ClaimState, read_claim
from emif_daemon.share.clock import parse_utc
from emif_daemon.share.control import paused
from emif_daemon.share.failure_records import FailureLog
from emif_daemon.share.layout import (
    STAGES,
    Layout,
    is_ignored,
    is_input_png,
    segment_output,
    upscale_output,
)
from emif_daemon.share.watch import TreeScanner


@dataclass
class StageCounts:
    pending: int = 0
    working: int = 0
    done: int = 0
    failed: int = 0
    working_by_host: dict[str, int] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)


def classify(
    inputs: dict[str, str],
    outputs: set[str],
    failed: set[str],
    claims: dict[str, dict[str, Any] | None],
) -> StageCounts:
    """Pure: item key → output key, what exists, what failed, claims of unfinished items."""
    counts = StageCounts()
    for key, out in inputs.items():
        if out in outputs:
            counts.done += 1
        elif key in failed:
            counts.failed += 1
        elif key in claims:
            counts.working += 1
            host = str((claims[key] or {}).get("host", "?"))
            counts.working_by_host[host] = counts.working_by_host.get(host, 0) + 1
        else:
            counts.pending += 1
    return counts


def _claims_of(layout: Layout, stage: str, keys: list[str]) -> dict[str, dict[str, Any] | None]:
    """Working claims among `keys` (items not done), with owner and mtime.

    One listing of the claims tree instead of a stat per unfinished item.
    """
    folder = layout.claims / stage
    listed = TreeScanner(folder, want=lambda n: n.endswith(CLAIM_SUFFIX)).scan()
    claimed = {rel.removesuffix(CLAIM_SUFFIX) for rel in listed}
    found: dict[str, dict[str, Any] | None] = {}
    for key in claimed.intersection(keys):
        path = folder / (key + CLAIM_SUFFIX)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        content = read_claim(path) or {}
        if content.get("state") == ClaimState.DONE:
            continue
        found[key] = {**content, "mtime": mtime}
    return found


def _stage_inputs(layout: Layout, stage: str) -> tuple[dict[str, str], set[str]]:
    if stage == "generate":
        inputs: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for plan in read_plans(layout, cancelled=False):
            for item in plan.items():
                names = item.output_names()
                inputs[item.key] = names[-1]
                multi[item.key] = names
        outputs = TreeScanner(layout.generations, want=is_input_png).scan()
        complete = {names[-1] for names in multi.values() if all(n in outputs for n in names)}
        return inputs, complete
    rels = TreeScanner(layout.stage_input(stage), want=is_input_png).scan()
    if stage == "upscale":
        inputs = {rel: upscale_output(rel) for rel in rels}
        return inputs, TreeScanner(layout.stage_output(stage), want=is_input_png).scan()
    inputs = {rel: segment_output(rel) for rel in rels}
    expected = set(inputs.values())
    outs = TreeScanner(layout.stage_output(stage), want=lambda _n: False, report_dirs=True).scan(
        descend=lambda rel: rel not in expected
    )
    return inputs, outs


def stage_counts(layout: Layout, stage: str, server_now: float, lease_s: float) -> StageCounts:
    inputs, outputs = _stage_inputs(layout, stage)
    failed = FailureLog(layout.failed, stage).keys()
    unfinished = [k for k, out in inputs.items() if out not in outputs and k not in failed]
    claims = _claims_of(layout, stage, unfinished)
    counts = classify(inputs, outputs, failed, claims)
    for key, claim in sorted(claims.items()):
        age = server_now - float((claim or {}).get("mtime", server_now))
        counts.claims.append(
            {
                "item": key,
                "host": (claim or {}).get("host"),
                "age_s": round(age, 1),
                "stale": age > lease_s,
            }
        )
    return counts


def queue_counts(layout: Layout) -> dict[str, int]:
    def count(folder: Path) -> int:
        with contextlib.suppress(FileNotFoundError):
            return sum(
                1
                for e in os.scandir(folder)
                if e.is_file() and is_prompts_name(e.name) and ".cancelled." not in e.name
            )
        return 0

    return {
        "waiting": count(layout.queue),
        "accepted": count(layout.accepted),
        "done": count(layout.done),
        "rejected": count(layout.rejected),
        "cancelled": count(layout.cancelled),
    }


def host_reports(layout: Layout, server_now: float, live_s: float) -> dict[str, Any]:
    """What each daemon last said of itself (`.emif/hosts/<host>.json`), with `running`:
    not stopped, and reported within `live_s` (it reports every heartbeat)."""
    out: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(layout.hosts):
            if entry.name.endswith(".json") and not is_ignored(entry.name):
                with contextlib.suppress(OSError, ValueError):
                    doc = json.loads(Path(entry.path).read_bytes())
                    age = server_now - entry.stat().st_mtime
                    doc["running"] = not doc.get("stopped") and age <= live_s
                    doc["seen_s_ago"] = round(age)
                    out[entry.name.removesuffix(".json")] = doc
    return out


def finish_times(rows: list[dict[str, str]]) -> dict[str, list[float]]:
    """When each stage's items were done (all hosts), from the metrics rows."""
    out: dict[str, list[float]] = {}
    for row in rows:
        t = parse_utc(row.get("finished_at", ""))
        if row.get("status") == "done" and t is not None:
            out.setdefault(row["stage"], []).append(t)
    return out


def failures(layout: Layout) -> list[dict[str, Any]]:
    """Every failed item with its reason, newest first."""
    out = []
    for stage in STAGES:
        log = FailureLog(layout.failed, stage)
        keys = log.keys()
        for key in keys:
            record = log.read(key)
            if record is not None:
                out.append(record.to_json())
    return sorted(out, key=lambda r: str(r.get("failed_at", "")), reverse=True)


def batch_progress(layout: Layout, rate: float | None) -> list[dict[str, Any]]:
    """Each accepted prompts file: its generate items done, failed, to do, and its ETA."""
    made = TreeScanner(layout.generations, want=is_input_png).scan()
    failed = FailureLog(layout.failed, "generate").keys()
    out = []
    for plan in read_plans(layout, cancelled=False):
        if not (layout.accepted / plan.source).exists():
            continue
        done = bad = total = 0
        for item in plan.items():
            total += 1
            if all(n in made for n in item.output_names()):
                done += 1
            elif item.key in failed:
                bad += 1
        left = total - done - bad
        out.append(
            {
                "file": plan.source,
                "items": total,
                "done": done,
                "failed": bad,
                "pending": left,
                "eta_s": eta_seconds(left, rate),
            }
        )
    return out


def collect(
    layout: Layout,
    *,
    server_now: float,
    lease_s: float,
    disabled: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything `emif status` shows. ETAs come from the rate of the last items, and only
    while some daemon runs: with none running nothing will finish."""
    hosts = host_reports(layout, server_now, max(lease_s, 60.0))
    running = any(h["running"] for h in hosts.values())
    times = finish_times(read_rows(layout.metrics))
    stages: dict[str, Any] = {}
    for stage in STAGES:
        c = stage_counts(layout, stage, server_now, lease_s)
        rate = recent_rate(times.get(stage, []), time.time()) if running else None
        stages[stage] = {
            "pending": c.pending,
            "working": c.working,
            "done": c.done,
            "failed": c.failed,
            "working_by_host": c.working_by_host,
            "claims": c.claims,
            "per_hour": round(rate * 3600) if rate else 0,
            "eta_s": eta_seconds(c.pending + c.working, rate),
            "off": (disabled or {}).get(stage),
        }
    generate_rate = recent_rate(times.get("generate", []), time.time()) if running else None
    return {
        "stages": stages,
        "batches": batch_progress(layout, generate_rate),
        "failures": failures(layout),
        "running": running,
        "queue": queue_counts(layout),
        "hosts": hosts,
        "paused": paused(layout),
        "paused_hosts": sorted(
            p.stem.removeprefix("pause-") for p in layout.control.glob("pause-*.json")
        ),
    }
