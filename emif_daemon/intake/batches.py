"""What a person does to a whole prompts file: fix a failed batch, cancel one.

A fix keeps the names: the corrected file must have the same jobs (nation, category and
count, in order) as the batch it fixes, and its plan reuses the batch's indices. Only the
items that failed are made again, with the new prompts and payloads; an item whose images
exist is never touched. A cancelled batch leaves queue/accepted/ for queue/cancelled/, so
no host claims its items any more; items in hand finish.

A fix takes several steps, so it is written down first (docs/protocol.md#fixing-a-batch):
`.emif/fixes/<key>.json` holds the corrected file, its plan and the failed items, and is the
one step that decides the fix happens. Its steps are then done in an order in which a kill at
any point leaves the old state or a state the journal completes: the plan (its copy first),
the failed items' records and broken claims, the finished file set aside as
`<stem>.before-fix.json`, the corrected file in queue/accepted/, the corrected file in queue/
(if that is how it came), and last the journal. Each step can be done twice. Any host's
intake (under the intake lock) and `emif retry --file` complete a journal they find.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from emif_daemon.intake.planning import Expansion
from emif_daemon.intake.plans import Plan, read_plan, replace_plan
from emif_daemon.intake.prompts import parse
from emif_daemon.share.atomic import (
    atomic_write,
    atomic_write_json,
    publish_new,
    read_regular,
    rename_noreplace,
)
from emif_daemon.share.claims import forget_broken
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.failure_records import FailureLog
from emif_daemon.share.layout import Layout
from emif_daemon.share.names import key_component

GENERATE = "generate"
MAX_JOURNAL_BYTES = 512 * 2**20


@dataclass(frozen=True)
class FixResult:
    batch: str
    pending_again: int  # failed items made pending with the new plan


@dataclass(frozen=True)
class Fix:
    """A fix checked and ready to be written down."""

    batch: str
    data: bytes
    plan: Plan
    failed: list[str]


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


def propose_fix(layout: Layout, exp: Expansion, name: str, data: bytes) -> Fix | list[str]:
    """The fix of batch `name` by the corrected file `data`, or why there is none."""
    old = read_plan(layout, name)
    if batch_file(layout, name) is None or old is None:
        return [f"{name}: no accepted or finished batch of that name under {layout.queue}"]
    parsed = parse(data, exp.limits)
    if parsed.problems:
        return parsed.problems
    sha = hashlib.sha256(data).hexdigest()
    if sha == old.sha256:
        return [f"{name}: the file is the batch as it is; `emif retry` retries it unchanged"]
    new = exp.plan(parsed, sha, name)
    problems = fix_problems(old, new)
    if problems:
        return problems
    pairs = zip(old.jobs, new.jobs, strict=True)
    kept = Plan(name, sha, tuple(replace(j, first=w.first) for w, j in pairs))
    return Fix(name, data, kept, failed_items(layout, name))


def journal_path(layout: Layout, name: str) -> Path:
    return layout.fixes / (key_component(Path(name).stem) + ".json")


def start_fix(layout: Layout, fix: Fix, *, queued: Path | None = None) -> FixResult:
    """Write the fix down (from here on it happens), then do it. `queued`: the corrected
    file in queue/ that asked for it, removed once the fix is done."""
    doc = {
        "batch": fix.batch,
        "sha256": fix.plan.sha256,
        "data": base64.b64encode(fix.data).decode(),
        "plan": fix.plan.to_json(),
        "failed": fix.failed,
        "queued": queued.name if queued is not None else None,
        "at": utc_stamp(),
    }
    journal = journal_path(layout, fix.batch)
    atomic_write_json(journal, doc)
    return finish_fix(layout, journal)


def pending_fixes(layout: Layout) -> list[Path]:
    """Journals of fixes not finished yet (a host killed in the middle of one)."""
    try:
        return sorted(Path(e.path) for e in os.scandir(layout.fixes) if e.name.endswith(".json"))
    except FileNotFoundError:
        return []


def finish_fix(layout: Layout, journal: Path) -> FixResult:
    """Do (again) every step of the fix written in `journal`. OSError if it cannot be read,
    ValueError if it is damaged: then nothing was changed by it."""
    try:
        doc = json.loads(read_regular(journal, MAX_JOURNAL_BYTES))
        name, data = str(doc["batch"]), base64.b64decode(doc["data"], validate=True)
        plan = Plan.from_json(doc["plan"])
        failed = [str(k) for k in doc["failed"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{journal}: not a fix journal ({exc!r})") from exc
    replace_plan(layout, name, plan)
    log = FailureLog(layout.failed, GENERATE)
    for key in failed:
        forget_broken(layout.broken, GENERATE, key)
        log.forget(key)
    _place(layout, name, data)
    if doc.get("queued"):
        queued = layout.queue / str(doc["queued"])
        with contextlib.suppress(OSError):
            if queued.read_bytes() == data:
                queued.unlink()
    journal.unlink(missing_ok=True)
    return FixResult(name, len(failed))


def _place(layout: Layout, name: str, data: bytes) -> None:
    """The corrected file becomes the batch's file in queue/accepted/; what it replaces is
    kept in queue/done/ as `<stem>.before-fix.json`."""
    accepted, done = layout.accepted / name, layout.done / name
    with contextlib.suppress(FileNotFoundError):
        old = accepted.read_bytes()
        if old != data:  # a fix of a batch still at work: keep its old bytes, then replace
            _keep_aside(layout, name, old)
            atomic_write(accepted, data)
    with contextlib.suppress(FileNotFoundError):
        _set_aside(layout, done, name)
    if not accepted.exists():
        with contextlib.suppress(FileExistsError):
            publish_new(accepted, data)


def _aside_names(layout: Layout, name: str) -> list[Path]:
    stem = Path(name).stem
    return [
        layout.done / f"{stem}.before-fix{'' if n == 1 else f'-{n}'}.json" for n in range(1, 1000)
    ]


def _keep_aside(layout: Layout, name: str, data: bytes) -> None:
    for target in _aside_names(layout, name):
        with contextlib.suppress(FileExistsError):
            publish_new(target, data)
            return


def _set_aside(layout: Layout, done: Path, name: str) -> None:
    """Rename the finished file out of the batch's way (FileNotFoundError if it is not
    there: set aside already)."""
    for target in _aside_names(layout, name):
        try:
            rename_noreplace(done, target)
            return
        except FileExistsError:
            continue


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
