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

from .claims import CLAIM_SUFFIX, ClaimState, read_claim
from .control import paused
from .failures import FailureLog
from .inbox import read_plans
from .layout import STAGES, Layout, is_ignored, is_input_png, segment_output, upscale_output
from .metrics import read_rows
from .watch import TreeScanner


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
        for plan in read_plans(layout):
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
                if e.is_file()
                and e.name.endswith(".json")
                and not e.name.endswith(".error.json")
                and not is_ignored(e.name)
            )
        return 0

    return {
        "waiting": count(layout.queue),
        "accepted": count(layout.accepted),
        "done": count(layout.done),
        "rejected": count(layout.rejected),
    }


def host_reports(layout: Layout) -> dict[str, Any]:
    """What each daemon last said of itself (`.emif/hosts/<host>.json`)."""
    out: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(layout.hosts):
            if entry.name.endswith(".json") and not is_ignored(entry.name):
                with contextlib.suppress(OSError, ValueError):
                    out[entry.name.removesuffix(".json")] = json.loads(
                        Path(entry.path).read_bytes()
                    )
    return out


def throughput(rows: list[dict[str, str]], now: float, window_s: float = 3600) -> dict[str, int]:
    """Items finished per stage within the last `window_s` (all hosts), from metrics rows."""
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - window_s))
    counts: dict[str, int] = {}
    for row in rows:
        if row.get("status") == "done" and row.get("finished_at", "") >= since:
            counts[row["stage"]] = counts.get(row["stage"], 0) + 1
    return counts


def eta_seconds(remaining: int, per_hour: int) -> int | None:
    if remaining == 0:
        return 0
    return round(remaining / per_hour * 3600) if per_hour else None


def collect(layout: Layout, *, server_now: float, lease_s: float) -> dict[str, Any]:
    stages: dict[str, Any] = {}
    rate = throughput(read_rows(layout.metrics), time.time())
    for stage in STAGES:
        c = stage_counts(layout, stage, server_now, lease_s)
        per_hour = rate.get(stage, 0)
        stages[stage] = {
            "pending": c.pending,
            "working": c.working,
            "done": c.done,
            "failed": c.failed,
            "working_by_host": c.working_by_host,
            "claims": c.claims,
            "done_last_hour": per_hour,
            "eta_s": eta_seconds(c.pending + c.working, per_hour),
        }
    return {
        "stages": stages,
        "queue": queue_counts(layout),
        "hosts": host_reports(layout),
        "paused": paused(layout),
        "paused_hosts": sorted(
            p.stem.removeprefix("pause-") for p in layout.control.glob("pause-*.json")
        ),
    }


def _eta(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02}m" if hours else f"{rest // 60}m{rest % 60:02}s"


def render_table(status: dict[str, Any]) -> str:
    head = (
        f"{'stage':<10}{'pending':>9}{'working':>9}{'done':>9}{'failed':>9}{'/hour':>8}{'ETA':>9}"
    )
    lines = [head + "  working by host"]
    for name, s in status["stages"].items():
        hosts = ", ".join(f"{h}: {n}" for h, n in sorted(s["working_by_host"].items())) or "-"
        lines.append(
            f"{name:<10}{s['pending']:>9}{s['working']:>9}{s['done']:>9}{s['failed']:>9}"
            f"{s['done_last_hour']:>8}{_eta(s['eta_s']):>9}  {hosts}"
        )
        for claim in s["claims"][:10]:
            flag = "  STALE" if claim["stale"] else ""
            lines.append(f"    {claim['item']} on {claim['host']}, {claim['age_s']:.0f} s{flag}")
    q = status["queue"]
    lines.append(
        f"queue: {q['waiting']} waiting, {q['accepted']} accepted, {q['done']} done, "
        f"{q['rejected']} rejected"
    )
    for host, report in sorted(status.get("hosts", {}).items()):
        when = " (in its last run)" if report.get("stopped") else ""
        for stage, why in (report.get("unavailable") or {}).items():
            lines.append(f"{stage} unavailable on {host}{when}: {why}")
    marker = status.get("paused")
    if marker:
        lines.append(
            f"PAUSED by {marker.get('host')} at {marker.get('at')}: {marker.get('reason') or '-'}"
        )
    for host in status.get("paused_hosts", []):
        lines.append(f"{host} is paused on its own (started with --paused); `emif resume`")
    return "\n".join(lines)
