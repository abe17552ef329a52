"""Which image indices a new prompts file may use (docs/architecture.md#the-data-path).

A new file never maps onto images made from another: its indices for a nation/category
continue after every index already planned (by any accepted file's plan) or present (any
PNG under GENERATIONS/, a user's too). Two hosts accepting two files at the same moment
must not both pick the same next index, so the look and the plan's publication happen
under one lock on the share, `.emif/intake.lock`, created exclusively; a lock whose owner
died is broken after the lease, by the file server's clock.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from emif_daemon.intake.plans import Plan
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import Layout
from emif_daemon.share.locks import HostLock

LOCK_STALE_S = 60.0  # held for a moment per file; older means its owner is gone


@dataclass
class FolderUse:
    """What is known to use indices of one nation/category."""

    highest: int = 0
    planned: list[tuple[int, int, str, str]] = field(
        default_factory=list
    )  # first, last, file, prompt
    present: dict[int, str] = field(default_factory=dict)  # index → a file name on disk


Folder = tuple[str, str]


def index_use(layout: Layout, folders: set[Folder], plans: list[Plan]) -> dict[Folder, FolderUse]:
    """Indices used in `folders` by `plans` and by the PNGs on disk."""
    use = {folder: FolderUse() for folder in folders}
    for plan in plans:
        for job in plan.jobs:
            u = use.get((job.nation, job.category))
            if u is not None:
                last = job.first + job.count - 1
                u.planned.append((job.first, last, plan.source, job.prompt))
                u.highest = max(u.highest, last)
    for (nation, category), u in use.items():
        pattern = re.compile(rf"{re.escape(nation)}_{re.escape(category)}_(\d+)_\d+\.png")
        with contextlib.suppress(OSError):
            for entry in os.scandir(layout.generations / nation / category):
                found = pattern.fullmatch(entry.name)
                if found:
                    index = int(found.group(1))
                    u.present.setdefault(index, entry.name)
                    u.highest = max(u.highest, index)
    return use


def overlap_problems(plan: Plan, use: dict[Folder, FolderUse]) -> list[str]:
    """An explicit `start_index` that would reuse names of existing images or plans."""
    problems = []
    for job in plan.jobs:
        u = use.get((job.nation, job.category))
        if u is None:
            continue
        last = job.first + job.count - 1
        existing = sorted(i for i in u.present if job.first <= i <= last)
        if existing:
            names = ", ".join(u.present[i] for i in existing[:3])
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            prompt = next((p for a, b, _f, p in u.planned if a <= existing[0] <= b), None)
            made = f", made from the prompt {prompt!r}" if prompt else ""
            problems.append(
                f"{job.loc}.start_index: indices {job.first}…{last} of {job.nation}/"
                f"{job.category} would reuse the names of existing images ({names}{more}{made}); "
                f"leave start_index out to continue after {u.highest}"
            )
            continue
        for a, b, source, prompt in u.planned:
            if job.first <= b and a <= last:
                problems.append(
                    f"{job.loc}.start_index: indices {job.first}…{last} of {job.nation}/"
                    f"{job.category} are planned already by {source} ({a}…{b}, prompt "
                    f"{prompt!r}); leave start_index out to continue after {u.highest}"
                )
                break
    return problems


@contextlib.contextmanager
def intake_lock(
    layout: Layout, clock: ServerClock, identity: HostIdentity, stale_s: float = LOCK_STALE_S
) -> Iterator[bool]:
    """Hold the share's intake lock while the body runs; yields False (without it) when
    another live host holds it: try again next round."""
    lock = HostLock(
        layout.state / "intake.lock", clock, identity, stale_s=stale_s, beat_s=stale_s / 3
    )
    if not lock.acquire():
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
