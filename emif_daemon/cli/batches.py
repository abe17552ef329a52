"""`emif validate`, `enqueue`, `plan`, `cancel` and `retry`: what a person does to a prompts
file, and to the items that failed."""

from __future__ import annotations

import argparse
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
from emif_daemon.intake.allocation import index_use, intake_lock, overlap_problems
from emif_daemon.intake.batches import FixResult, cancel_batch, fix_batch
from emif_daemon.intake.planning import Expansion, existing_spelling_problems
from emif_daemon.intake.plans import build_payload, expand, read_plans
from emif_daemon.intake.prompts import Job, Limits, parse
from emif_daemon.servers.dialects import jobs_problems
from emif_daemon.share.atomic import publish_new
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


def enqueue_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--force", action="store_true", help="enqueue even if invalid")


def enqueue(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    path = Path(args.file)
    data = read_file(path)
    if data is None:
        return exit_codes.FAILED
    problems = parse(data).problems
    if problems and not args.force:
        for problem in problems:
            print(f"{path}: {problem}")
        print(f"{path}: not enqueued; fix it or pass --force", file=sys.stderr)
        return exit_codes.FAILED
    layout = Layout(cfg.paths.root)
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
    parsed = parse(data, Limits(max_items=cfg.generate.max_items_per_file))
    layout = Layout(cfg.paths.root)
    problems = list(parsed.problems)
    rows: list[dict[str, Any]] = []
    if not problems:
        use = index_use(layout, {(j.nation, j.category) for j in parsed.jobs}, read_plans(layout))
        planned = expand(
            parsed,
            file_sha=hashlib.sha256(data).hexdigest(),
            template=cfg.generate.prompt_template,
            negative_default=cfg.generate.negative_prompt,
            base_payload=cfg.generate.payload,
            source=path.name,
            taken={folder: u.highest for folder, u in use.items()},
        )
        problems = existing_spelling_problems(planned, layout.generations)
        problems += overlap_problems(planned, use)
        for item in planned.items():
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
    same name, and its failed items are made again with it."""
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
            result = fix_batch(layout, exp, path.name, data)
    finally:
        clock.close()
    if not isinstance(result, FixResult):
        for problem in result:
            print(f"{path}: {problem}", file=sys.stderr)
        return exit_codes.FAILED
    print(f"{path.name}: plan replaced; {result.pending_again} failed item(s) pending again")
    return exit_codes.OK


COMMANDS = {
    "validate": Command(file_argument, validate),
    "enqueue": Command(enqueue_arguments, enqueue),
    "plan": Command(plan_arguments, plan),
    "cancel": Command(cancel_arguments, cancel),
    "retry": Command(retry_arguments, retry),
}
