"""What a stored plan must look like (intake/plans.py reads it): every field of the type and
range a planner writes, so a damaged plan is found when it is read, with what is wrong, and
never reaches a stage as a plan that raises later. Pure."""

from __future__ import annotations

import re
from collections.abc import Set
from typing import Any

from emif_daemon.intake.prompts import MAX_COUNT, MAX_SEED
from emif_daemon.share.names import name_problem

PLAN_VERSION = 2
MAX_INDEX = 10**9
MAX_IMAGES = 10_000


def checked_plan(doc: Any, job_fields: Set[str]) -> tuple[str, str, list[dict[str, Any]]]:
    """(source, sha256, job rows) of a stored plan; ValueError saying what is wrong. The
    first format, a list of items, is read as jobs of one."""
    if not isinstance(doc, dict):
        raise ValueError(f"a JSON {type(doc).__name__}, not an object")
    source, sha = doc.get("source"), doc.get("sha256")
    if not isinstance(source, str) or not source:
        raise ValueError("`source` is not a file name")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ValueError("`sha256` is not a SHA-256 in hex")
    if doc.get("version") == PLAN_VERSION:
        rows = [_job(row, f"jobs[{n}]", job_fields) for n, row in enumerate(_list(doc, "jobs"))]
    else:
        rows = [
            _job(_item_as_job(row), f"items[{n}]", job_fields)
            for n, row in enumerate(_list(doc, "items"))
        ]
    return source, sha, rows


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    rows = doc.get(key)
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"`{key}` is not a non-empty list")
    return rows


def _item_as_job(row: Any) -> Any:
    if not isinstance(row, dict):
        return row
    job = {k: v for k, v in row.items() if k not in ("index", "key")}
    return {**job, "first": row.get("index"), "count": 1}


def _job(row: Any, where: str, job_fields: Set[str]) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where} is a JSON {type(row).__name__}, not an object")
    if set(row) != job_fields:
        wrong = sorted(set(row) ^ set(job_fields))
        raise ValueError(f"{where} has missing or unknown fields: {', '.join(wrong)}")
    for key in ("loc", "prompt", "negative_prompt", "nation", "category"):
        if not isinstance(row[key], str):
            raise ValueError(f"{where}.{key} is not a string")
    for key in ("nation", "category"):
        problem = name_problem(row[key])
        if problem is not None:
            raise ValueError(f"{where}.{key} {problem}")
    for key, high in (("first", MAX_INDEX), ("count", MAX_COUNT), ("images", MAX_IMAGES)):
        if not _int_in(row[key], 1, high):
            raise ValueError(f"{where}.{key} is not an integer 1…{high}")
    seed = row["seed"]
    if seed is not None and not _int_in(seed, 0, MAX_SEED):
        raise ValueError(f"{where}.seed is not null or an integer 0…{MAX_SEED}")
    if not isinstance(row["payload"], dict):
        raise ValueError(f"{where}.payload is not an object")
    return row


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
