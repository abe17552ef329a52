"""`emif validate`, `enqueue`, `plan`, `cancel` and `retry`: what a person does to a prompts
file, and to the items that failed."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from emif_daemon import exit_codes
from emif_daemon.cli.arguments import config_of, read_file
from emif_daemon.cli.commands import Command
from emif_daemon.config.schema import load_config, resolve_config_path
from emif_daemon.daemon.wiring import host_id
from emif_daemon.intake.allocation import intake_lock
from emif_daemon.intake.batches import (
    cancel_batch,
    failed_items,
    finish_fix,
    journal_path,
    pending_fixes,
    propose_fix,
    start_fix,
)
from emif_daemon.intake.planning import Expansion, dry_run
from emif_daemon.intake.plans import build_payload, read_plan
from emif_daemon.intake.prompts import Job, parse
from emif_daemon.servers.dialects import jobs_problems
from emif_daemon.share.atomic import publish_new, read_regular
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.control import retry_failed
from emif_daemon.share.identity import HostIdentity
from emif_daemon.share.layout import STAGES, Layout


def file_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")


def validate(args: argparse.Namespace) -> int:
    path = Path(args.file)
    data = read_file(path)
    if data is None:
        return exit_codes.FAILED
    parsed = parse(data)
    problems = list(parsed.problems)
    if not problems:
        problems = _payload_problems(args, parsed.jobs)
    if not problems:
        problems = _acceptance_problems(args, path.name, data)
    for problem in problems:
        print(f"{path}: {problem}")
    if problems:
        return exit_codes.FAILED
    count = sum(j.count for j in parsed.jobs)
    print(f"{path}: valid, {len(parsed.jobs)} job(s), {count} item(s)")
    return exit_codes.OK


def _payload_problems(args: argparse.Namespace, jobs: list[Job]) -> list[str]:
    """Each job's payload overrides against the keys and ranges of the server dialect of
    the config's recipe (no config file: not checked)."""
    config = resolve_config_path(getattr(args, "config", None))
    if not config.exists() and not getattr(args, "config", None):
        return []
    return jobs_problems(load_config(config).generate.payload, jobs)


def _acceptance_problems(args: argparse.Namespace, name: str, data: bytes) -> list[str]:
    """The daemon's acceptance rules against the config's root, when there is a config:
    the very same file again, spellings, start_index over existing images, name lengths."""
    config = resolve_config_path(getattr(args, "config", None))
    if not config.exists() and not getattr(args, "config", None):
        return []
    cfg = load_config(config)
    layout = Layout(cfg.paths.root)
    return dry_run(layout, Expansion.of(cfg.generate), name, data)[1]


def enqueue_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--force", action="store_true", help="enqueue even if invalid")


def enqueue(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    path = Path(args.file)
    data = read_file(path)
    if data is None:
        return exit_codes.FAILED
    layout = Layout(cfg.paths.root)
    # The daemon's own acceptance rules (intake/planning.py): what it would refuse is
    # refused here, with its reasons.
    problems = dry_run(layout, Expansion.of(cfg.generate), path.name, data, queue=True)[1]
    if problems and not args.force:
        for problem in problems:
            print(f"{path}: {problem}")
        refused = "not enqueued: the daemon would refuse it; fix it or pass --force"
        print(f"{path}: {refused}", file=sys.stderr)
        return exit_codes.FAILED
    layout.queue.mkdir(parents=True, exist_ok=True)
    target = layout.queue / path.name
    try:
        publish_new(target, data)  # temporary name, then rename: never read half-copied
    except FileExistsError:
        print(f"{target} exists already; rename your file", file=sys.stderr)
        return exit_codes.FAILED
    print(f"enqueued {target}")
    return exit_codes.OK


def plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def plan(args: argparse.Namespace) -> int:
    """The dry run: the plan the file would get if it were accepted now (nothing is
    written), with the names that exist already and the prompt they were made from."""
    cfg = config_of(args)
    path = Path(args.file)
    data = read_file(path)
    if data is None:
        return exit_codes.FAILED
    layout = Layout(cfg.paths.root)
    planned, problems = dry_run(layout, Expansion.of(cfg.generate), path.name, data)
    rows: list[dict[str, Any]] = []
    for item in planned.items() if planned is not None else ():
        names = item.output_names()
        rows.append(
            {
                "item": item.key,
                "outputs": names,
                "exist": [n for n in names if (layout.generations / n).exists()],
                "seed": item.seed,
                "prompt": item.prompt,
                "payload": build_payload(cfg.generate.payload, item),
            }
        )
    if args.json:
        print(json.dumps({"file": str(path), "problems": problems, "items": rows}, indent=2))
    else:
        for row in rows:
            there = " (exists)" if row["exist"] else ""
            print(f"{row['outputs'][0]}{there}  seed {row['seed']}  {row['prompt'][:60]!r}")
        for problem in problems:
            print(f"{path}: {problem}")
        print(f"{path}: {len(rows)} item(s)" + (", not valid" if problems else ""))
    return exit_codes.FAILED if problems else exit_codes.OK


def cancel_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the batch's file name in queue/accepted/")


def cancel(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    layout = Layout(cfg.paths.root)
    name = Path(args.file).name
    record = cancel_batch(layout, name, host=host_id(cfg))
    if record is None:
        where = "finished already" if (layout.done / name).exists() else "not accepted"
        print(f"{name}: no batch to cancel in {layout.accepted} ({where})", file=sys.stderr)
        return exit_codes.FAILED
    print(
        f"cancelled {name} ({record['items']} item(s)); every host stops claiming its items, "
        f"those in hand finish; the file is in {layout.cancelled}"
    )
    return exit_codes.OK


def retry_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", choices=STAGES)
    p.add_argument("--file", help="a corrected prompts file: replaces the plan of its batch")


def retry(args: argparse.Namespace) -> int:
    if args.file:
        return retry_file(args)
    cfg = config_of(args)
    counts = retry_failed(Layout(cfg.paths.root), args.stage)
    for stage, n in counts.items():
        print(f"{stage}: {n} failed item(s) made pending again")
    return exit_codes.OK


def retry_file(args: argparse.Namespace) -> int:
    """`emif retry --file FILE`: the corrected file replaces the plan of the batch of the
    same name, and its failed items are made again with it. Written down first, so a kill
    anywhere is completed by the next `retry --file` or any daemon (intake/batches.py)."""
    cfg = config_of(args)
    path = Path(args.file)
    data = read_file(path)
    if data is None:
        return exit_codes.FAILED
    layout = Layout(cfg.paths.root)
    exp = Expansion.of(cfg.generate)
    me = HostIdentity.current(host_id(cfg))
    clock = ServerClock(layout.clock, f"{me.host}.{me.machine}.{me.pid}")
    try:
        with intake_lock(layout, clock, me) as held:
            if not held:
                print("another host is accepting a file right now; try again", file=sys.stderr)
                return exit_codes.FAILED
            earlier = _finish_earlier_fixes(layout, path.name, data)
            if earlier is not None:
                began = "finished the fix an earlier `emif retry --file` began"
                print(f"{path.name}: {began}; {earlier} failed item(s) pending again")
                return exit_codes.OK
            if _fixed_already(layout, path.name, data):
                print(f"{path.name}: the batch has this very file and no failed item already")
                return exit_codes.OK
            fix = propose_fix(layout, exp, path.name, data)
            if isinstance(fix, list):
                for problem in fix:
                    print(f"{path}: {problem}", file=sys.stderr)
                return exit_codes.FAILED
            result = start_fix(layout, fix)
    finally:
        clock.close()
    print(f"{path.name}: plan replaced; {result.pending_again} failed item(s) pending again")
    return exit_codes.OK


def _fixed_already(layout: Layout, name: str, data: bytes) -> bool:
    """The fix asked for is done (a command killed after it, run again)."""
    plan = read_plan(layout, name)
    same = plan is not None and plan.sha256 == hashlib.sha256(data).hexdigest()
    return same and not failed_items(layout, name)


def _finish_earlier_fixes(layout: Layout, name: str, data: bytes) -> int | None:
    """Finish every fix a killed command or daemon left; if one was this very fix, how many
    items it made pending again."""
    mine = journal_path(layout, name)
    ours = None
    for journal in pending_fixes(layout):
        same = False
        if journal == mine:
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(read_regular(journal, 2**30))
                same = doc.get("sha256") == hashlib.sha256(data).hexdigest()
        try:
            result = finish_fix(layout, journal)
        except (OSError, ValueError) as exc:
            print(f"{journal}: cannot finish this earlier fix: {exc}", file=sys.stderr)
            continue
        if same:
            ours = result.pending_again
    return ours


COMMANDS = {
    "validate": Command(file_argument, validate),
    "enqueue": Command(enqueue_arguments, enqueue),
    "plan": Command(plan_arguments, plan),
    "cancel": Command(cancel_arguments, cancel),
    "retry": Command(retry_arguments, retry),
}
