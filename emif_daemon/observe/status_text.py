"""`emif status` and `emif failures` as text a person reads at a terminal."""

from __future__ import annotations

from typing import Any

SHOWN_FAILURES = 10


def duration(seconds: int | None) -> str:
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
        if s.get("off"):
            lines.append(f"{name:<10} off: {s['off']}")
            continue
        hosts = ", ".join(f"{h}: {n}" for h, n in sorted(s["working_by_host"].items())) or "-"
        lines.append(
            f"{name:<10}{s['pending']:>9}{s['working']:>9}{s['done']:>9}{s['failed']:>9}"
            f"{s['per_hour']:>8}{duration(s['eta_s']):>9}  {hosts}"
        )
        for claim in s["claims"][:10]:
            flag = "  STALE" if claim["stale"] else ""
            lines.append(f"    {claim['item']} on {claim['host']}, {claim['age_s']:.0f} s{flag}")
    for b in status.get("batches", []):
        lines.append(
            f"batch {b['file']}: {b['done']}/{b['items']} done, {b['failed']} failed, "
            f"{b['pending']} to do, ETA {duration(b['eta_s'])}"
        )
    q = status["queue"]
    lines.append(
        f"queue: {q['waiting']} waiting, {q['accepted']} accepted, {q['done']} done, "
        f"{q['rejected']} rejected, {q['cancelled']} cancelled"
    )
    lines += _hosts(status)
    lines += _failures(status.get("failures", []))
    marker = status.get("paused")
    if marker:
        lines.append(
            f"PAUSED by {marker.get('host')} at {marker.get('at')}: {marker.get('reason') or '-'}"
        )
    for host in status.get("paused_hosts", []):
        lines.append(f"{host} is paused on its own (started with --paused); `emif resume`")
    if not status.get("running"):
        lines.append("no daemon is running: nothing will be made (no ETA)")
    return "\n".join(lines)


def _hosts(status: dict[str, Any]) -> list[str]:
    lines = []
    for host, report in sorted(status.get("hosts", {}).items()):
        since = report.get("updated", "?")
        state = "running" if report.get("running") else f"stopped (last seen {since})"
        servers = ", ".join(
            f"{url} {'reachable' if s.get('reachable') else 'UNREACHABLE'}"
            for url, s in sorted((report.get("servers") or {}).items())
        )
        lines.append(f"host {host}: {state}" + (f"; {servers}" if servers else ""))
        when = "" if report.get("running") else " (in its last run)"
        for stage, why in (report.get("unavailable") or {}).items():
            lines.append(f"  {stage} unavailable on {host}{when}: {why}")
    return lines


def _failures(failed: list[dict[str, Any]]) -> list[str]:
    if not failed:
        return []
    lines = [f"failed items ({len(failed)}; `emif failures` lists all, `emif retry` retries):"]
    lines += [f"  {line}" for line in failure_lines(failed[:SHOWN_FAILURES])]
    return lines


def failure_lines(failed: list[dict[str, Any]]) -> list[str]:
    return [
        f"{r.get('stage')} {r.get('item')}: {r.get('reason')} "
        f"({r.get('attempts')} attempt(s), {r.get('host')}, {r.get('failed_at')})"
        for r in failed
    ]
