"""The acceptance rules of a prompts file and its plan (docs/architecture.md#the-data-path).

`check_file` is the one place that says whether a file is accepted and what its images are
called: the daemon runs it under the share's intake lock with reservations that take the
indices on the file server (allocation.py); `emif enqueue`, `plan` and `validate` run it dry,
so they refuse a file with the daemon's very reasons.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from emif_daemon.config.schema import GenerateConfig
from emif_daemon.errors import NotARegularFile
from emif_daemon.intake.allocation import (
    FolderUse,
    Reservations,
    folder_key,
    index_use,
    overlap_problems,
)
from emif_daemon.intake.plans import Plan, expand, read_plans
from emif_daemon.intake.prompts import DEFAULT_LIMITS, Limits, Parsed, parse
from emif_daemon.intake.queue_files import queued_files
from emif_daemon.share.atomic import read_regular
from emif_daemon.share.layout import Layout, is_ignored
from emif_daemon.share.names import MAX_NAME_BYTES, longest_name_bytes, name_key, safe_name

RECENT_WRITE_S = 30.0  # a file cut short and changed this recently was still being written


@dataclass(frozen=True)
class Expansion:
    """What turns a valid file into a plan, and the bounds it must keep (from the config)."""

    template: str
    negative_default: str
    base_payload: dict[str, Any]
    limits: Limits = DEFAULT_LIMITS

    @classmethod
    def of(cls, cfg: GenerateConfig) -> Expansion:
        limits = Limits(max_items=cfg.max_items_per_file)
        return cls(cfg.prompt_template, cfg.negative_prompt, cfg.payload, limits)

    def plan(
        self,
        parsed: Parsed,
        sha: str,
        source: str,
        *,
        taken: dict[tuple[str, str], int] | None = None,
        firsts: list[int] | None = None,
    ) -> Plan:
        """The plan of a valid file: its indices reserved (`firsts`), or as hinted (`taken`)."""
        return expand(
            parsed,
            file_sha=sha,
            template=self.template,
            negative_default=self.negative_default,
            base_payload=self.base_payload,
            source=source,
            taken=taken,
            firsts=firsts,
        )


class HasJobs(Protocol):
    @property
    def jobs(self) -> Sequence[Any]: ...


def plan_file(
    layout: Layout,
    exp: Expansion,
    accepted: Path,
    plans: list[Plan],
    now: float,
    reservations: Reservations,
) -> tuple[Plan | None, list[str]]:
    """The plan of an accepted file (under the intake lock), or None and every reason it
    cannot have one. `plans` are the plans this host knows of; `now` is the file server's
    time. The caller releases `reservations` unless it publishes the plan."""
    try:
        data = read_regular(accepted, exp.limits.max_bytes)
    except NotARegularFile as exc:
        return None, [f"$: {exc.strerror}"]
    plan, problems = check_file(layout, exp, accepted.name, data, plans, reservations)
    return plan, maybe_unfinished(accepted, problems, now)


def check_file(
    layout: Layout,
    exp: Expansion,
    name: str,
    data: bytes,
    plans: list[Plan],
    reservations: Reservations,
    *,
    queued: Sequence[tuple[str, str]] = (),
) -> tuple[Plan | None, list[str]]:
    """Every rule a file must meet to be accepted, and its plan if it does.

    The file itself (prompts.py); not the very same file again (`plans`, and for `emif
    enqueue` the files `queued`: name, sha256); nation and category spelled as every earlier
    file and folder spells them; an explicit `start_index` over no image or plan; its indices
    reserved (`reservations`); every derived name within 255 bytes.
    """
    parsed = parse(data, exp.limits)
    if parsed.problems:
        return None, parsed.problems
    sha = hashlib.sha256(data).hexdigest()
    same = next((p.source for p in plans if p.sha256 == sha), None)
    if same is not None:
        return None, [
            f"$: the very same file was accepted before as {same}: its images are "
            "planned or made already, so nothing new would be made; to make more images "
            "of these prompts, add jobs or raise their counts in a new file"
        ]
    twin = next((n for n, s in queued if s == sha), None)
    if twin is not None:
        return None, [
            f"$: the very same file is queued already as {twin}: it would be refused as the "
            "very same file accepted before; to make more images of these prompts, add "
            "jobs or raise their counts in a new file"
        ]
    use = index_use(layout, {(j.nation, j.category) for j in parsed.jobs}, plans)
    taken = {
        (j.nation, j.category): use[folder_key(j.nation, j.category)].highest for j in parsed.jobs
    }
    hinted = exp.plan(parsed, sha, name, taken=taken)
    problems = existing_spelling_problems(parsed, layout.generations)
    problems += overlap_problems(hinted, use)
    if problems:
        return None, problems
    for job in _one_per_folder(parsed):
        problems += reservations.spelling(job.nation, job.category, job.loc)
    if problems:
        return None, problems
    firsts, problems = _reserve(parsed, use, reservations)
    if problems:
        return None, problems
    plan = exp.plan(parsed, sha, name, firsts=firsts)
    problems = _length_problems(plan)
    return (plan if not problems else None), problems


def _one_per_folder(parsed: Parsed) -> list[Any]:
    seen: dict[tuple[str, str], Any] = {}
    for job in parsed.jobs:
        seen.setdefault(folder_key(job.nation, job.category), job)
    return list(seen.values())


def _reserve(
    parsed: Parsed, use: dict[tuple[str, str], FolderUse], reservations: Reservations
) -> tuple[list[int], list[str]]:
    """Each job's first index, reserved on the file server: an explicit `start_index` as
    asked (refused if any of it is taken), else the next free run after what is known."""
    firsts: list[int] = []
    problems: list[str] = []
    next_in_file: dict[tuple[str, str], int] = {}
    for job in parsed.jobs:
        key = folder_key(job.nation, job.category)
        if job.start_index is not None:
            first = job.start_index
            taken = reservations.exact(job.nation, job.category, first, job.count)
            if taken:
                shown = ", ".join(map(str, taken[:5])) + (" …" if len(taken) > 5 else "")
                problems.append(
                    f"{job.loc}.start_index: indices {shown} of {job.nation}/{job.category} "
                    "are taken already by another file's images; leave start_index out to "
                    "continue after them"
                )
        else:
            start = max(next_in_file.get(key, 1), use[key].highest + 1)
            first = reservations.run(job.nation, job.category, start, job.count)
        next_in_file[key] = max(next_in_file.get(key, 1), first + job.count)
        firsts.append(first)
    return firsts, problems


def _length_problems(plan: Plan) -> list[str]:
    problems = []
    for job in plan.jobs:
        size = longest_name_bytes(job.nation, job.category, job.first + job.count - 1, job.images)
        if size > MAX_NAME_BYTES:
            problems.append(
                f"{job.loc}.nation: with its category and index {job.first + job.count - 1} "
                f"the longest file name would be {size} bytes, at most {MAX_NAME_BYTES}; "
                "shorten the nation or the category"
            )
    return problems


def maybe_unfinished(accepted: Path, problems: list[str], now: float) -> list[str]:
    """A file cut short and changed moments ago was most likely still being written
    (copied over a slow share): say so."""
    cut = any(p.startswith(("$: not valid JSON", "$: the file is empty")) for p in problems)
    try:
        recent = now - accepted.stat().st_mtime < RECENT_WRITE_S
    except OSError:
        recent = False
    if cut and recent:
        return [*problems, "$: still being written when it was read? drop it again"]
    return problems


def _folder_names(folder: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(folder) if e.is_dir() and not is_ignored(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def existing_spelling_problems(plan: HasJobs, generations: Path) -> list[str]:
    """Names that would land in an existing folder spelled differently (case, or the
    decomposed form a Mac's SMB client lists): on a Mac they are the same folder."""
    problems: list[str] = []
    nations = {name_key(safe_name(n)): safe_name(n) for n in _folder_names(generations)}
    for job in plan.jobs:
        there = nations.get(name_key(job.nation))
        if there is not None and there != job.nation:
            problems.append(
                f"{job.loc}.nation: {job.nation!r} differs only in case from the existing "
                f"folder GENERATIONS/{there}; write {there!r}"
            )
            continue
        categories = {
            name_key(safe_name(c)): safe_name(c)
            for c in _folder_names(generations / (there or job.nation))
        }
        known = categories.get(name_key(job.category))
        if known is not None and known != job.category:
            problems.append(
                f"{job.loc}.category: {job.category!r} differs only in case from the existing "
                f"folder GENERATIONS/{job.nation}/{known}; write {known!r}"
            )
    return problems


def dry_run(
    layout: Layout, exp: Expansion, name: str, data: bytes, *, queue: bool = False
) -> tuple[Plan | None, list[str]]:
    """What the daemon would decide for this file if it were accepted now, by the same
    rules; nothing is written (`emif plan`, `validate`, `enqueue`). With `queue`, the very
    same file waiting in queue/ is refused too (it would be refused once that one is in)."""
    queued: list[tuple[str, str]] = []
    if queue:
        for path in queued_files(layout):
            with contextlib.suppress(OSError):
                queued.append(
                    (
                        path.name,
                        hashlib.sha256(read_regular(path, exp.limits.max_bytes)).hexdigest(),
                    )
                )
    plans = read_plans(layout)
    return check_file(layout, exp, name, data, plans, Reservations(layout, dry=True), queued=queued)
