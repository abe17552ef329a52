"""`emif report`: totals from every host's metrics CSVs (docs/protocol.md#the-root)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import TypedDict

from emif_daemon.share.layout import STAGES


class Summary(TypedDict):
    """Totals of some metrics rows (a stage, or a stage on one host)."""

    images: int
    failed: int
    seconds_total: float
    seconds_mean: float
    seconds_median: float
    seconds_p95: float
    server_seconds_total: float
    cpu_percent_mean: float
    rss_mb_max: float


class StageSummary(Summary):
    watts: float
    energy_wh: float
    hosts: dict[str, Summary]


class Report(TypedDict):
    """What `emif report` prints, or writes as JSON with --json."""

    stages: dict[str, StageSummary]
    energy_wh_total: float


def _p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def _summary(rows: list[dict[str, str]]) -> Summary:
    done = [r for r in rows if r["status"] == "done"]
    seconds = [float(r["seconds"]) for r in done]
    return {
        "images": len(done),
        "failed": sum(r["status"] == "failed" for r in rows),
        "seconds_total": round(sum(seconds), 3),
        "seconds_mean": round(statistics.fmean(seconds), 3) if seconds else 0.0,
        "seconds_median": round(statistics.median(seconds), 3) if seconds else 0.0,
        "seconds_p95": round(_p95(seconds), 3),
        "server_seconds_total": round(sum(float(r["server_seconds"]) for r in done), 3),
        "cpu_percent_mean": (
            round(statistics.fmean(float(r["cpu_percent"]) for r in done), 1) if done else 0.0
        ),
        "rss_mb_max": max((float(r["rss_mb"]) for r in rows), default=0.0),
    }


def build_report(rows: list[dict[str, str]], watts: dict[str, float]) -> Report:
    """Per stage and per stage×host; energy = watts of the stage × seconds it worked."""
    by_stage: dict[str, list[dict[str, str]]] = defaultdict(list)
    by_host: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_stage[row["stage"]].append(row)
        by_host[(row["stage"], row["host"])].append(row)
    stages: dict[str, StageSummary] = {}
    order = [s for s in STAGES if s in by_stage] + sorted(set(by_stage) - set(STAGES))
    for stage in order:
        summary = _summary(by_stage[stage])
        w = float(watts.get(stage, 0.0))
        stages[stage] = {
            **summary,
            "watts": w,
            "energy_wh": round(w * summary["seconds_total"] / 3600, 3),
            "hosts": {
                host: _summary(host_rows)
                for (s, host), host_rows in sorted(by_host.items())
                if s == stage
            },
        }
    total_wh = round(sum(s["energy_wh"] for s in stages.values()), 3)
    return {"stages": stages, "energy_wh_total": total_wh}


def render_report(report: Report) -> str:
    head = (
        f"{'stage':<10}{'host':<14}{'images':>7}{'failed':>7}{'mean s':>9}{'median s':>10}"
        f"{'p95 s':>9}{'cpu %':>7}{'rss MB':>8}{'Wh':>9}"
    )
    lines = [head, "-" * len(head)]
    for stage, s in report["stages"].items():
        rows: list[tuple[str, Summary]] = [("all", s), *s["hosts"].items()]
        for host, h in rows:
            wh = f"{s['energy_wh']:>9.2f}" if host == "all" else ""
            lines.append(
                f"{stage:<10}{host:<14}{h['images']:>7}{h['failed']:>7}{h['seconds_mean']:>9.2f}"
                f"{h['seconds_median']:>10.2f}{h['seconds_p95']:>9.2f}{h['cpu_percent_mean']:>7.1f}"
                f"{h['rss_mb_max']:>8.0f}{wh}"
            )
    lines.append(f"estimated energy: {report['energy_wh_total']:.2f} Wh (from [report] watts)")
    return "\n".join(lines)
