"""Planning an accepted prompts file: the indices it gets and every reason it gets none
(docs/architecture.md#the-data-path). Runs under the share's intake lock (allocation.py)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emif_daemon.config.schema import GenerateConfig
from emif_daemon.errors import NotARegularFile
from emif_daemon.intake.allocation import index_use, overlap_problems
from emif_daemon.intake.plans import Plan, expand
from emif_daemon.intake.prompts import DEFAULT_LIMITS, Limits, parse
from emif_daemon.share.atomic import read_regular
from emif_daemon.share.layout import Layout, is_ignored
from emif_daemon.share.names import name_key, safe_name

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


def plan_file(
    layout: Layout, exp: Expansion, accepted: Path, plans: list[Plan], now: float
) -> tuple[Plan | None, list[str]]:
    """The plan of an accepted file (under the intake lock), or None and every reason it
    cannot have one: invalid, the very same file again, names over existing ones.
    `plans` are every plan on the root; `now` is the file server's time."""
    try:
        data = read_regular(accepted, exp.limits.max_bytes)
    except NotARegularFile as exc:
        return None, [f"$: {exc.strerror}"]
    parsed = parse(data, exp.limits)
    if parsed.problems:
        return None, maybe_unfinished(accepted, parsed.problems, now)
    sha = hashlib.sha256(data).hexdigest()
    same = next((p for p in plans if p.sha256 == sha), None)
    if same is not None:
        return None, [
            f"$: the very same file was accepted before as {same.source}: its images are "
            "planned or made already, so nothing new would be made; to make more images "
            "of these prompts, add jobs or raise their counts in a new file"
        ]
    use = index_use(layout, {(j.nation, j.category) for j in parsed.jobs}, plans)
    plan = expand(
        parsed,
        file_sha=sha,
        template=exp.template,
        negative_default=exp.negative_default,
        base_payload=exp.base_payload,
        source=accepted.name,
        taken={folder: u.highest for folder, u in use.items()},
    )
    problems = existing_spelling_problems(plan, layout.generations)
    problems += overlap_problems(plan, use)
    return (plan if not problems else None), problems


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


def existing_spelling_problems(plan: Plan, generations: Path) -> list[str]:
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
