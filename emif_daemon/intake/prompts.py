"""Prompts files: parse, validate and expand into items. Pure: bytes in, plan out.

The format is in README.md#quick-start, the path of an item in docs/architecture.md#the-data-path.

Every problem is reported with its JSON location (``jobs[3].nation: contains '/'``), all at
once, so a user fixes a file in one go.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from emif_daemon.share.names import (
    MAX_NAME_BYTES,
    longest_name_bytes,
    name_key,
    name_problem,
    safe_name,
)

MAX_COUNT = 10_000
MAX_SEED = 2**32 - 1
TOP_KEYS = {"name", "defaults", "jobs"}
DEFAULT_KEYS = {"count", "seed", "negative_prompt", "payload"}
JOB_KEYS = {"nation", "category", "prompt", "count", "seed", "negative_prompt", "payload"}
JOB_KEYS |= {"start_index"}
LEGACY_KEYS = {"language", "prompt_addition", "count", "seed", "negative_prompt", "payload"}
LEGACY_KEYS |= {"start_index"}
LEGACY_CATEGORIES = ("family", "working")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one prompts file may ask for; all enforced at validation."""

    max_items: int = 100_000  # generate.max_items_per_file
    max_depth: int = 16  # nesting of objects and lists (payloads nest a few levels)
    max_prompt_chars: int = 10_000
    max_bytes: int = 64 * 2**20


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Job:
    loc: str  # JSON location, e.g. "jobs[3]"
    nation: str
    category: str
    prompt: str
    count: int
    seed: int | None
    negative_prompt: str | None
    payload: dict[str, Any]
    start_index: int | None


class _Settings(TypedDict):
    """What `defaults` or one entry sets; None = not set there."""

    count: int | None
    seed: int | None
    negative_prompt: str | None
    payload: dict[str, Any]


@dataclass
class Parsed:
    name: str | None = None
    jobs: list[Job] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Parsed:
    """Both shapes of a prompts file (README.md#quick-start); no `problems` = valid."""
    out = Parsed()
    if len(data) > limits.max_bytes:
        out.problems.append(f"$: the file is {len(data)} bytes, at most {limits.max_bytes}")
        return out
    if not data.strip():
        out.problems.append("$: the file is empty; it must hold a JSON object or list")
        return out
    doc = _load_json(data, limits, out.problems)
    if out.problems:
        return out
    if isinstance(doc, list):
        _parse_legacy(doc, out)
    elif isinstance(doc, dict):
        _parse_native(doc, out)
    else:
        out.problems.append(f"$: expected an object with `jobs` or a list, got {_kind(doc)}")
    for job in out.jobs:
        for key, text in (("prompt", job.prompt), ("negative_prompt", job.negative_prompt)):
            if text is not None and len(text) > limits.max_prompt_chars:
                out.problems.append(
                    f"{job.loc}.{key}: {len(text)} characters, at most {limits.max_prompt_chars}"
                )
    if not out.problems:
        _check_overlaps(out)
        _check_totals(out, limits)
        _check_same_folders(out)
    return out


def _load_json(data: bytes, limits: Limits, problems: list[str]) -> Any:
    """JSON that cannot silently mean something else: no duplicate keys (the last would
    win), no NaN or Infinity (not JSON), no lone surrogates, no nesting without bound."""
    duplicates: list[str] = []
    constants: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    def constant(name: str) -> None:
        constants.append(name)

    try:
        doc = json.loads(data.decode("utf-8-sig"), object_pairs_hook=pairs, parse_constant=constant)
    except UnicodeDecodeError as exc:
        problems.append(f"$: not UTF-8 text ({exc.reason} at byte {exc.start})")
        return None
    except json.JSONDecodeError as exc:
        problems.append(f"$: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        return None
    except RecursionError:
        problems.append(f"$: nested too deeply; at most {limits.max_depth} levels of objects/lists")
        return None
    for key in sorted(set(duplicates)):
        problems.append(f"$: the key {key!r} appears twice in one object; keep one")
    for name in sorted(set(constants)):
        problems.append(f"$: {name} is not a JSON number; write a number")
    problems.extend(_walk_problems(doc, limits))
    return doc


def _walk_problems(doc: Any, limits: Limits) -> list[str]:
    """Depth, surrogates and non-finite numbers, in one iterative pass."""
    problems: set[str] = set()
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > limits.max_depth:
                problems.add(f"$: nested more than {limits.max_depth} levels deep")
                continue
            children = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
            for key, child in children:
                if isinstance(key, str):
                    stack.append((key, depth))
                stack.append((child, depth + 1))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems.add(f"$: the text {value[:40]!r} holds a lone surrogate; not Unicode")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.add("$: a number too large to represent; write a smaller one")
    return sorted(problems)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _parse_native(doc: dict[str, Any], out: Parsed) -> None:
    for key in sorted(set(doc) - TOP_KEYS):
        out.problems.append(f"{key}: unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        out.problems.append(f"name: expected a string, got {_kind(name)}")
    out.name = name if isinstance(name, str) else None
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        out.problems.append(f"defaults: expected an object, got {_kind(defaults)}")
        defaults = {}
    for key in sorted(set(defaults) - DEFAULT_KEYS):
        out.problems.append(
            f"defaults.{key}: unknown key (known: {', '.join(sorted(DEFAULT_KEYS))})"
        )
    base = _common(defaults, "defaults", out.problems, count_default=1)
    jobs = doc.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        out.problems.append("jobs: required, a non-empty list of job objects")
        return
    for i, entry in enumerate(jobs):
        loc = f"jobs[{i}]"
        if not isinstance(entry, dict):
            out.problems.append(f"{loc}: expected an object, got {_kind(entry)}")
            continue
        for key in sorted(set(entry) - JOB_KEYS):
            out.problems.append(f"{loc}.{key}: unknown key (known: {', '.join(sorted(JOB_KEYS))})")
        nation = _folder(entry.get("nation"), f"{loc}.nation", out.problems)
        category = _folder(entry.get("category"), f"{loc}.category", out.problems)
        _add_job(out, loc, nation, category, entry.get("prompt"), entry, base)


def _parse_legacy(doc: list[Any], out: Parsed) -> None:
    if not doc:
        out.problems.append("$: the list is empty; nothing to generate")
    for i, entry in enumerate(doc):
        loc = f"[{i}]"
        if not isinstance(entry, dict):
            out.problems.append(f"{loc}: expected an object, got {_kind(entry)}")
            continue
        for key in sorted(set(entry) - LEGACY_KEYS):
            out.problems.append(
                f"{loc}.{key}: unknown key (known: {', '.join(sorted(LEGACY_KEYS))})"
            )
        nation = _folder(entry.get("language"), f"{loc}.language", out.problems)
        addition = entry.get("prompt_addition")
        category = None
        if isinstance(addition, str):
            words = set(re.findall(r"[a-z]+", addition.lower()))
            found = [c for c in LEGACY_CATEGORIES if c in words]
            if len(found) == 1:
                category = found[0]
            else:
                why = "both" if found else "neither"
                out.problems.append(
                    f"{loc}.prompt_addition: contains {why} of the words 'family' and 'working'; "
                    "the category is taken from exactly one of them"
                )
        base: _Settings = {"count": 1, "seed": None, "negative_prompt": None, "payload": {}}
        _add_job(out, loc, nation, category, addition, entry, base, prompt_key="prompt_addition")


def _add_job(
    out: Parsed,
    loc: str,
    nation: str | None,
    category: str | None,
    prompt: object,
    entry: dict[str, Any],
    base: _Settings,
    prompt_key: str = "prompt",
) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        out.problems.append(f"{loc}.{prompt_key}: required, a non-empty string")
        prompt = None
    own = _common(entry, loc, out.problems, count_default=None)
    start = entry.get("start_index")
    if start is not None and not _int_in(start, 1, 10**9):
        out.problems.append(f"{loc}.start_index: expected an integer ≥ 1, got {json.dumps(start)}")
        start = None
    if nation is None or category is None or prompt is None:
        return
    count = own["count"] if own["count"] is not None else base["count"]
    seed = own["seed"] if own["seed"] is not None else base["seed"]
    negative = own["negative_prompt"]
    negative = negative if negative is not None else base["negative_prompt"]
    payload = {**base["payload"], **own["payload"]}
    out.jobs.append(
        Job(loc, nation, category, str(prompt), count or 1, seed, negative, payload, start)
    )


def _common(
    table: dict[str, Any], loc: str, problems: list[str], count_default: int | None
) -> _Settings:
    result: _Settings = {
        "count": count_default,
        "seed": None,
        "negative_prompt": None,
        "payload": {},
    }
    if "count" in table:
        if _int_in(table["count"], 1, MAX_COUNT):
            result["count"] = table["count"]
        else:
            problems.append(
                f"{loc}.count: expected an integer 1…{MAX_COUNT}, got {json.dumps(table['count'])}"
            )
    if table.get("seed") is not None:
        if _int_in(table["seed"], 0, MAX_SEED):
            result["seed"] = table["seed"]
        else:
            problems.append(
                f"{loc}.seed: expected an integer 0…{MAX_SEED}, got {json.dumps(table['seed'])}"
            )
    if "negative_prompt" in table:
        if isinstance(table["negative_prompt"], str):
            result["negative_prompt"] = table["negative_prompt"]
        else:
            problems.append(f"{loc}.negative_prompt: expected a string")
    if "payload" in table:
        if isinstance(table["payload"], dict):
            result["payload"] = table["payload"]
        else:
            problems.append(f"{loc}.payload: expected an object, got {_kind(table['payload'])}")
    return result


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _folder(value: object, loc: str, problems: list[str]) -> str | None:
    if value is None:
        problems.append(f"{loc}: required, a folder name")
        return None
    problem = name_problem(value)
    if problem:
        problems.append(f"{loc}: {problem}")
        return None
    return safe_name(str(value))


def index_ranges(
    jobs: list[Job], taken: Mapping[tuple[str, str], int] | None = None
) -> list[tuple[Job, int, int]]:
    """(job, first, last) index per job: indices continue across entries of one folder,
    after the highest index `taken` already (by other files, or images on disk)."""
    next_index = {folder: last + 1 for folder, last in (taken or {}).items()}
    out = []
    for job in jobs:
        folder = (job.nation, job.category)
        first = job.start_index or next_index.get(folder, 1)
        last = first + job.count - 1
        next_index[folder] = max(next_index.get(folder, 1), last + 1)
        out.append((job, first, last))
    return out


def _check_totals(parsed: Parsed, limits: Limits) -> None:
    total = sum(job.count for job in parsed.jobs)
    if total > limits.max_items:
        parsed.problems.append(
            f"$: {total} images in one file, at most {limits.max_items}; split the file, or "
            "raise generate.max_items_per_file in the config"
        )
    for job, _first, last in index_ranges(parsed.jobs):
        size = longest_name_bytes(job.nation, job.category, last, 99)
        if size > MAX_NAME_BYTES:
            parsed.problems.append(
                f"{job.loc}.nation: with its category and index the longest file name would be "
                f"{size} bytes, at most {MAX_NAME_BYTES}; shorten the nation or the category"
            )


def _check_same_folders(parsed: Parsed) -> None:
    """Names that differ only in case or Unicode form are one folder on a Mac."""
    spelled: dict[str, tuple[str, str]] = {}
    for job in parsed.jobs:
        for what, name, key in (
            ("nation", job.nation, name_key(job.nation)),
            ("category", job.category, f"{name_key(job.nation)}/{name_key(job.category)}"),
        ):
            first = spelled.setdefault(key, (name, job.loc))
            if first[0] != name:
                parsed.problems.append(
                    f"{job.loc}.{what}: {name!r} and {first[0]!r} ({first[1]}) differ only in "
                    "case or accents' encoding, so they are one folder on a Mac; spell them alike"
                )


def _check_overlaps(parsed: Parsed) -> None:
    taken: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    for job, first, last in index_ranges(parsed.jobs):
        folder = (job.nation, job.category)
        for a, b, other in taken.get(folder, []):
            if first <= b and a <= last:
                parsed.problems.append(
                    f"{job.loc}.start_index: indices {first}…{last} of {job.nation}/"
                    f"{job.category} overlap {other} ({a}…{b}); two images would share a name"
                )
        taken.setdefault(folder, []).append((first, last, job.loc))
