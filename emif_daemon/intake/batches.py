"""What a person does to a whole prompts file: fix a failed batch, cancel one.

A fix keeps the names: the corrected file must have the same jobs (nation, category and
count, in order) as the batch it fixes, and its plan reuses the batch's indices. Only the
items that failed are made again, with the new prompts and payloads; an item whose images
exist is never touched. A cancelled batch leaves queue/accepted/ for queue/cancelled/, so
no host claims its items any more; items in hand finish.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from emif_daemon.intake.planning import Expansion
from emif_daemon.intake.plans import Plan, expand, read_plan, replace_plan
from emif_daemon.intake.prompts import parse
from emif_daemon.intake.queue_files import unique_name
from emif_daemon.share.atomic import atomic_write, atomic_write_json, rename_noreplace
from emif_daemon.share.claims import forget_broken
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.failure_records import FailureLog
from emif_daemon.share.layout import Layout

GENERATE = "generate"


@dataclass(frozen=True)
class FixResult:
    batch: str
    pending_again: int  # failed items made pending with the new plan


def batch_file(layout: Layout, name: str) -> Path | None:
    """Where the batch called `name` is now: accepted/ or done/."""
    for folder in (layout.accepted, layout.done):
        if (folder / name).is_file():
            return folder / name
    return None


def failed_items(layout: Layout, name: str) -> list[str]:
    """The generate items of batch `name` that have a failure record."""
    log = FailureLog(layout.failed, GENERATE)
    out = []
    for key in sorted(log.keys()):
        record = log.read(key)
        if record is not None and record.batch == name:
            out.append(key)
    return out


def fix_problems(old: Plan, new: Plan) -> list[str]:
    """Why `new` cannot replace `old`'s plan (pure): the names must stay the same."""
    if len(old.jobs) != len(new.jobs):
        return [
            f"$: the batch {old.source} has {len(old.jobs)} job(s), this file "
            f"{len(new.jobs)}; a fix keeps the jobs and changes prompts or payloads only "
            "(for other images, drop a file with another name)"
        ]
    problems = []
    for was, now in zip(old.jobs, new.jobs, strict=True):
        if (was.nation, was.category, was.count) != (now.nation, now.category, now.count):
            problems.append(
                f"{now.loc}: was {was.nation}/{was.category} × {was.count} in {old.source}, "
                f"now {now.nation}/{now.category} × {now.count}; a fix keeps each job's "
                "nation, category and count"
            )
    return problems


def fix_batch(layout: Layout, exp: Expansion, name: str, data: bytes) -> FixResult | list[str]:
    """Replace the plan of batch `name` by the corrected file `data` and make its failed
    items pending again; the problems if it cannot."""
    where = batch_file(layout, name)
    old = read_plan(layout, name)
    if where is None or old is None:
        return [f"{name}: no accepted or finished batch of that name under {layout.queue}"]
    parsed = parse(data, exp.limits)
    if parsed.problems:
        return parsed.problems
    sha = hashlib.sha256(data).hexdigest()
    if sha == old.sha256:
        return [f"{name}: the file is the batch as it is; `emif retry` retries it unchanged"]
    new = expand(
        parsed,
        file_sha=sha,
        template=exp.template,
        negative_default=exp.negative_default,
        base_payload=exp.base_payload,
        source=name,
    )
    problems = fix_problems(old, new)
    if problems:
        return problems
    pairs = zip(old.jobs, new.jobs, strict=True)
    kept = Plan(name, sha, tuple(replace(j, first=w.first) for w, j in pairs))
    failed = failed_items(layout, name)
    # The plan first: from here on a retried item is made with the new payload.
    replace_plan(layout, name, kept)
    log = FailureLog(layout.failed, GENERATE)
    for key in failed:
        forget_broken(layout.broken, GENERATE, key)
        log.forget(key)
    if where.parent == layout.done:
        kept_as = layout.done / unique_name(layout.done, Path(name).stem + ".before-fix.json")
        with contextlib.suppress(FileNotFoundError, FileExistsError):
            rename_noreplace(where, kept_as)
        where = layout.accepted / name
    atomic_write(where, data)
    return FixResult(name, len(failed))


def cancel_batch(layout: Layout, name: str, *, host: str) -> dict[str, object] | None:
    """Move batch `name` from accepted/ to cancelled/ with a record; None if it is not an
    accepted batch (finished already, or not there)."""
    layout.cancelled.mkdir(parents=True, exist_ok=True)
    try:
        rename_noreplace(layout.accepted / name, layout.cancelled / name)
    except (FileNotFoundError, FileExistsError):
        return None
    plan = read_plan(layout, name)
    record: dict[str, object] = {
        "file": name,
        "cancelled_by": host,
        "cancelled_at": utc_stamp(),
        "items": len(plan) if plan else None,
    }
    atomic_write_json(layout.cancelled / (Path(name).stem + ".cancelled.json"), record)
    return record
