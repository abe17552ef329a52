"""Prompts files: parse, validate and expand into items. Pure: bytes in, plan out.

The format is in README.md#quick-start, the path of an item in docs/architecture.md#the-data-path.

Every problem is reported with its JSON location (``jobs[3].nation: contains '/'``), all at
once, so a user fixes a file in one go.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

from .layout import name_problem, safe_name

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


@dataclass(frozen=True)
class PlannedItem:
    """One server answer: `images` PNGs named <N>_<c>_<index>_<k>.png, k = 1…images."""

    key: str
    nation: str
    category: str
    index: int
    prompt: str
    negative_prompt: str
    seed: int
    payload: dict[str, Any]
    images: int
    loc: str

    def output_names(self) -> list[str]:
        stem = f"{self.nation}_{self.category}_{self.index}"
        return [f"{self.nation}/{self.category}/{stem}_{k}.png" for k in range(1, self.images + 1)]


class PlanDocument(TypedDict):
    """`.emif/jobs/<stem>.plan.json`: the expanded items of an accepted file."""

    source: str
    sha256: str
    items: list[dict[str, Any]]  # PlannedItem fields


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


def parse(data: bytes) -> Parsed:
    """Both shapes of a prompts file (README.md#quick-start); no `problems` = valid."""
    out = Parsed()
    if not data.strip():
        out.problems.append("$: the file is empty; it must hold a JSON object or list")
        return out
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        out.problems.append(f"$: not UTF-8 text ({exc.reason} at byte {exc.start})")
        return out
    except json.JSONDecodeError as exc:
        out.problems.append(f"$: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        return out
    if isinstance(doc, list):
        _parse_legacy(doc, out)
    elif isinstance(doc, dict):
        _parse_native(doc, out)
    else:
        out.problems.append(f"$: expected an object with `jobs` or a list, got {_kind(doc)}")
    if not out.problems:
        _check_overlaps(out)
    return out


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


def _ranges(jobs: list[Job]) -> list[tuple[Job, int, int]]:
    """(job, first, last) index per job: indices continue across entries of one folder."""
    next_index: dict[tuple[str, str], int] = {}
    out = []
    for job in jobs:
        folder = (job.nation, job.category)
        first = job.start_index or next_index.get(folder, 1)
        last = first + job.count - 1
        next_index[folder] = max(next_index.get(folder, 1), last + 1)
        out.append((job, first, last))
    return out


def _check_overlaps(parsed: Parsed) -> None:
    taken: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    for job, first, last in _ranges(parsed.jobs):
        folder = (job.nation, job.category)
        for a, b, other in taken.get(folder, []):
            if first <= b and a <= last:
                parsed.problems.append(
                    f"{job.loc}.start_index: indices {first}…{last} of {job.nation}/"
                    f"{job.category} overlap {other} ({a}…{b}); two images would share a name"
                )
        taken.setdefault(folder, []).append((first, last, job.loc))


def images_per_answer(payload: dict[str, Any]) -> int:
    """batch_size × batch_count (n_iter in A1111)."""
    size = payload.get("batch_size", 1)
    count = payload.get("batch_count", payload.get("n_iter", 1))
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (size, count))
    return size * count if ok else 1


def derived_seed(file_sha: str, key: str) -> int:
    """A seed for an item whose job gives none: as good as random, and the same on every host,
    so hosts that expand the same accepted file agree without talking."""
    digest = hashlib.sha256(f"{file_sha}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def expand(
    parsed: Parsed,
    *,
    file_sha: str,
    template: str,
    negative_default: str,
    base_payload: dict[str, Any],
) -> list[PlannedItem]:
    """Deterministic items of a valid file, in file order."""
    items: list[PlannedItem] = []
    for job, first, last in _ranges(parsed.jobs):
        images = images_per_answer({**base_payload, **job.payload})
        for index in range(first, last + 1):
            key = f"{job.nation}/{job.category}/{job.nation}_{job.category}_{index}"
            seed = job.seed + index - 1 if job.seed is not None else derived_seed(file_sha, key)
            items.append(
                PlannedItem(
                    key=key,
                    nation=job.nation,
                    category=job.category,
                    index=index,
                    prompt=template.replace("{prompt}", job.prompt),
                    negative_prompt=(
                        job.negative_prompt if job.negative_prompt is not None else negative_default
                    ),
                    seed=seed % (MAX_SEED + 1),
                    payload=job.payload,
                    images=images,
                    loc=job.loc,
                )
            )
    return items


def plan_document(source: str, file_sha: str, items: list[PlannedItem]) -> PlanDocument:
    return {"source": source, "sha256": file_sha, "items": [asdict(i) for i in items]}


def items_from_plan(doc: PlanDocument) -> list[PlannedItem]:
    return [PlannedItem(**i) for i in doc["items"]]
