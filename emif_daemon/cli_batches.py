"""`emif plan`, `emif cancel` and `emif retry --file`: what a person does to a prompts file."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cli_common import EXIT_FAILED, EXIT_OK, config_of
from .layout import Layout

Command = Callable[[str, object, str], argparse.ArgumentParser]


def add_commands(command: Command) -> None:
    p = command("plan", cmd_plan, "what a prompts file would make: names, seeds, payloads")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("cancel", cmd_cancel, "stop making a batch's images (items in hand finish)")
    p.add_argument("file", help="the batch's file name in queue/accepted/")
    p = command("failures", cmd_failures, "every failed item with its reason")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
        return None


def cmd_plan(args: argparse.Namespace) -> int:
    """The dry run: the plan the file would get if it were accepted now (nothing is
    written), with the names that exist already and the prompt they were made from."""
    from .allocation import index_use, overlap_problems  # noqa: PLC0415
    from .inbox import existing_spelling_problems, read_plans  # noqa: PLC0415
    from .plan import expand  # noqa: PLC0415
    from .prompts import Limits, parse  # noqa: PLC0415
    from .stages.generate import build_payload  # noqa: PLC0415

    cfg = config_of(args)
    path = Path(args.file)
    data = _read(path)
    if data is None:
        return EXIT_FAILED
    parsed = parse(data, Limits(max_items=cfg.generate.max_items_per_file))
    layout = Layout(cfg.paths.root)
    problems = list(parsed.problems)
    rows: list[dict[str, Any]] = []
    if not problems:
        plans = read_plans(layout)
        use = index_use(layout, {(j.nation, j.category) for j in parsed.jobs}, plans)
        import hashlib  # noqa: PLC0415

        plan = expand(
            parsed, file_sha=hashlib.sha256(data).hexdigest(),
            template=cfg.generate.prompt_template, negative_default=cfg.generate.negative_prompt,
            base_payload=cfg.generate.payload, source=path.name,
            taken={folder: u.highest for folder, u in use.items()},
        )  # fmt: skip
        problems = existing_spelling_problems(plan, layout.generations)
        problems += overlap_problems(plan, use)
        for item in plan.items():
            names = item.output_names()
            exists = [n for n in names if (layout.generations / n).exists()]
            payload = build_payload(cfg.generate.payload, item)
            rows.append({"item": item.key, "outputs": names, "exist": exists, "seed": item.seed,
                         "prompt": item.prompt, "payload": payload})  # fmt: skip
    if args.json:
        print(json.dumps({"file": str(path), "problems": problems, "items": rows}, indent=2))
    else:
        for row in rows:
            there = " (exists)" if row["exist"] else ""
            print(f"{row['outputs'][0]}{there}  seed {row['seed']}  {row['prompt'][:60]!r}")
        for problem in problems:
            print(f"{path}: {problem}")
        print(f"{path}: {len(rows)} item(s)" + (", not valid" if problems else ""))
    return EXIT_FAILED if problems else EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    from .batches import cancel_batch  # noqa: PLC0415
    from .daemon import host_id  # noqa: PLC0415

    cfg = config_of(args)
    layout = Layout(cfg.paths.root)
    name = Path(args.file).name
    record = cancel_batch(layout, name, host=host_id(cfg))
    if record is None:
        where = "finished already" if (layout.done / name).exists() else "not accepted"
        print(f"{name}: no batch to cancel in {layout.accepted} ({where})", file=sys.stderr)
        return EXIT_FAILED
    print(f"cancelled {name} ({record['items']} item(s)); every host stops claiming its items, "
          f"those in hand finish; the file is in {layout.cancelled}")  # fmt: skip
    return EXIT_OK


def cmd_failures(args: argparse.Namespace) -> int:
    from .status import failures  # noqa: PLC0415
    from .status_text import failure_lines  # noqa: PLC0415

    cfg = config_of(args)
    failed = failures(Layout(cfg.paths.root))
    if args.json:
        print(json.dumps(failed, indent=2))
    else:
        for line in failure_lines(failed) or ["no failed item"]:
            print(line)
    return EXIT_OK


def retry_file(args: argparse.Namespace) -> int:
    """`emif retry --file FILE`: the corrected file replaces the plan of the batch of the
    same name, and its failed items are made again with it."""
    from .allocation import intake_lock  # noqa: PLC0415
    from .batches import FixResult, fix_batch  # noqa: PLC0415
    from .clock import ServerClock  # noqa: PLC0415
    from .daemon import host_id  # noqa: PLC0415
    from .identity import HostIdentity  # noqa: PLC0415
    from .inbox import Expansion  # noqa: PLC0415
    from .prompts import Limits  # noqa: PLC0415

    cfg = config_of(args)
    path = Path(args.file)
    data = _read(path)
    if data is None:
        return EXIT_FAILED
    layout = Layout(cfg.paths.root)
    g = cfg.generate
    exp = Expansion(g.prompt_template, g.negative_prompt, g.payload,
                    Limits(max_items=g.max_items_per_file))  # fmt: skip
    me = HostIdentity.current(host_id(cfg))
    clock = ServerClock(layout.clock, f"{me.host}.{me.machine}.{me.pid}")
    try:
        with intake_lock(layout, clock, me) as held:
            if not held:
                print("another host is accepting a file right now; try again", file=sys.stderr)
                return EXIT_FAILED
            result = fix_batch(layout, exp, path.name, data)
    finally:
        clock.close()
    if not isinstance(result, FixResult):
        for problem in result:
            print(f"{path}: {problem}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{path.name}: plan replaced; {result.pending_again} failed item(s) pending again")
    return EXIT_OK
