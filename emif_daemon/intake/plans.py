"""The plan of an accepted prompts file: its items, stored per job and made on demand, and
its file `.emif/jobs/<stem>.plan.json` — this module alone reads and writes plan files.

A file of 1 000 jobs × 10 000 images is 10 M items; the plan keeps the 1 000 jobs and
derives item n when asked, so memory grows with jobs, not items, and `items(start)` lets
a reader resume where it left off instead of scanning every item each time.
Deterministic: every host derives the same plan from the same accepted bytes.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from emif_daemon.intake.plan_checks import PLAN_VERSION, checked_plan
from emif_daemon.intake.prompts import MAX_SEED, Parsed, index_ranges
from emif_daemon.logs import get_logger
from emif_daemon.servers.dialects import merge_payload
from emif_daemon.share.atomic import atomic_write, publish_new, read_regular
from emif_daemon.share.layout import Layout
from emif_daemon.share.names import key_component

PLAN_SUFFIX = ".plan.json"
COPY_SUFFIX = ".plan-copy.json"  # the plan's second copy: what a damaged plan is restored from
MAX_PLAN_BYTES = 256 * 2**20  # a plan keeps jobs, not items: 100 000 jobs are ~60 MB


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class JobPlan:
    """One entry of the file, its final prompt made once (not once per image)."""

    loc: str
    nation: str
    category: str
    first: int  # index of its first image
    count: int
    prompt: str
    negative_prompt: str
    seed: int | None  # None: each item's seed is derived from the file and the item
    payload: dict[str, Any]
    images: int

    def item(self, index: int, file_sha: str) -> PlannedItem:
        key = f"{self.nation}/{self.category}/{self.nation}_{self.category}_{index}"
        if self.seed is not None:
            seed = (self.seed + index - 1) % (MAX_SEED + 1)
        else:
            seed = derived_seed(file_sha, key)
        return PlannedItem(
            key,
            self.nation,
            self.category,
            index,
            self.prompt,
            self.negative_prompt,
            seed,
            self.payload,
            self.images,
            self.loc,
        )


@dataclass(frozen=True)
class Plan:
    source: str
    sha256: str
    jobs: tuple[JobPlan, ...]
    _starts: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = list(itertools.accumulate((j.count for j in self.jobs), initial=0))
        object.__setattr__(self, "_starts", starts)  # frozen: set once, here

    def __len__(self) -> int:
        return self._starts[-1]

    def items(self, start: int = 0) -> Iterator[PlannedItem]:
        """Items in file order from position `start` (0 = the first)."""
        starts = self._starts
        j = max(0, bisect.bisect_right(starts, start) - 1)
        offset = start - starts[j] if j < len(self.jobs) else 0
        for job in self.jobs[j:]:
            for index in range(job.first + offset, job.first + job.count):
                yield job.item(index, self.sha256)
            offset = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "source": self.source,
            "sha256": self.sha256,
            "jobs": [asdict(j) for j in self.jobs],
        }

    @classmethod
    def from_json(cls, doc: Any) -> Plan:
        """A plan as stored, every field checked (ValueError says what is wrong); also reads
        the first format, a list of items (each becomes a job of one)."""
        source, sha, rows = checked_plan(doc, JOB_FIELDS)
        return cls(source, sha, tuple(JobPlan(**row) for row in rows))


JOB_FIELDS = frozenset(f.name for f in fields(JobPlan))


def build_payload(base: dict[str, Any], item: PlannedItem) -> dict[str, Any]:
    """[generate.payload] ⊕ the job's overrides ⊕ the computed fields; the seed is always ours.

    An override spelled as an alias of the recipe's key (`cfg_scale` over `guidance_scale`)
    replaces it, so one key is sent (docs/servers.md#payloads).
    """
    return {
        **merge_payload(base, item.payload),
        "prompt": item.prompt,
        "negative_prompt": item.negative_prompt,
        "seed": item.seed,
    }


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
    source: str = "",
    taken: Mapping[tuple[str, str], int] | None = None,
    firsts: Sequence[int] | None = None,
) -> Plan:
    """The plan of a valid file, in file order. Each job's first index is `firsts[n]` (as
    reserved, allocation.py), else they follow those `taken` (the highest index per
    nation/category already planned or present)."""
    ranges = index_ranges(parsed.jobs, taken)
    if firsts is not None:
        ranges = [(job, first, 0) for job, first in zip(parsed.jobs, firsts, strict=True)]
    jobs = tuple(
        JobPlan(
            loc=job.loc,
            nation=job.nation,
            category=job.category,
            first=first,
            count=job.count,
            prompt=template.replace("{prompt}", job.prompt),
            negative_prompt=(
                job.negative_prompt if job.negative_prompt is not None else negative_default
            ),
            seed=job.seed,
            payload=job.payload,
            images=images_per_answer({**base_payload, **job.payload}),
        )
        for job, first, _last in ranges
    )
    return Plan(source, file_sha, jobs)


# -- plan files --------------------------------------------------------------------------
# `.emif/jobs/<key>.plan.json`, where <key> is the batch's stem case-folded (names.key_component):
# `x.json` and `x.JSON`, one name on a Mac, are one plan path on every server, so a second
# batch of that name cannot be published over the first (inbox.py renames it). A second copy
# beside it, `<key>.plan-copy.json`, is what a damaged plan is restored from.


def plan_path(layout: Layout, batch: str) -> Path:
    """Where the plan of the batch (the accepted file's name) lives; a plan published before
    plan names were case-folded is found under the stem as written."""
    stem = Path(batch).stem
    path = layout.jobs / (key_component(stem) + PLAN_SUFFIX)
    legacy = layout.jobs / (stem + PLAN_SUFFIX)
    if legacy != path and not path.exists() and legacy.exists():
        return legacy
    return path


def copy_path(plan_file: Path) -> Path:
    return plan_file.with_name(plan_file.name.removesuffix(PLAN_SUFFIX) + COPY_SUFFIX)


def plan_bytes(plan: Plan) -> bytes:
    return (json.dumps(plan.to_json(), indent=2, ensure_ascii=False) + "\n").encode()


def publish_plan(layout: Layout, batch: str, plan: Plan) -> None:
    """The plan of a newly accepted file, by a no-replace rename; FileExistsError if a plan
    is at its path already (this batch's, planned by another host first, or another batch
    of a name that differs only in case). Then its copy."""
    path = plan_path(layout, batch)
    data = plan_bytes(plan)
    publish_new(path, data)
    atomic_write(copy_path(path), data)


def replace_plan(layout: Layout, batch: str, plan: Plan) -> None:
    """A fix of a batch: the same names, new prompts or payloads (intake/batches.py). The
    copy first: a kill between the two leaves a good plan either way."""
    path = plan_path(layout, batch)
    data = plan_bytes(plan)
    atomic_write(copy_path(path), data)
    atomic_write(path, data)


def has_plan(layout: Layout, batch: str) -> bool:
    return plan_path(layout, batch).exists()


def load_plan(path: Path) -> Plan:
    """The plan in `path`; FileNotFoundError if there is none, another OSError if it cannot
    be read, ValueError saying what is wrong if it is damaged."""
    try:
        raw = read_regular(path, MAX_PLAN_BYTES)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(exc.strerror or str(exc)) from exc
    try:
        return Plan.from_json(json.loads(raw))
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from exc


def read_plan(layout: Layout, batch: str) -> Plan | None:
    """The batch's plan, or None while there is none (or it cannot be read)."""
    try:
        plan = load_plan(plan_path(layout, batch))
    except (OSError, ValueError):
        return None
    return plan if same_name(plan.source, batch) else None


def same_name(a: str, b: str) -> bool:
    """Whether a plan's `source` is this batch's name (x.json's plan is not x.JSON's)."""
    return unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)


def restore_plan(path: Path) -> Plan | None:
    """Put the copy of a damaged plan in its place; the plan, or None if the copy is not
    good either."""
    try:
        plan = load_plan(copy_path(path))
    except (OSError, ValueError):
        return None
    atomic_write(path, plan_bytes(plan))
    return plan


@dataclass(frozen=True)
class Damaged:
    """A plan file that is there but is not a plan."""

    path: Path
    reason: str

    def repair(self, said: set[str]) -> Plan | None:
        """Restore the plan from its copy (`plan_restored`), or say once (`plan_damaged`)
        what is wrong and what to do; the plan, or None."""
        plan = restore_plan(self.path)
        if plan is not None:
            log = get_logger()
            log.warning("plan_restored", plan=str(self.path), damage=self.reason)
            return plan
        if str(self.path) not in said:
            said.add(str(self.path))
            get_logger().error(
                "plan_damaged",
                plan=str(self.path),
                damage=self.reason,
                hint="its copy is damaged too, so the names of its batch's images are unknown "
                "and its items are not made (other batches go on); restore both files from a "
                "backup of the share, or `emif cancel` the batch and drop the file again",
            )
        return None


class PlanBook:
    """Every plan on the root, each file parsed once per version (size and mtime), so a
    daemon that looks at its plans every round reads only those that changed."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._parsed: dict[str, tuple[tuple[int, int], Plan | Damaged]] = {}

    def plans(self, *, cancelled: bool = True) -> list[Plan]:
        """Every readable plan in name order; without those of cancelled batches if
        `cancelled` is False (what is still to be made)."""
        try:
            entries = sorted(
                (e for e in os.scandir(self.layout.jobs) if e.name.endswith(PLAN_SUFFIX)),
                key=lambda e: e.name,
            )
        except FileNotFoundError:
            return []
        seen, out = set(), []
        for entry in entries:
            seen.add(entry.name)
            plan = self._read(Path(entry.path))
            if isinstance(plan, Plan) and (
                cancelled or not (self.layout.cancelled / plan.source).exists()
            ):
                out.append(plan)
        for gone in set(self._parsed) - seen:
            del self._parsed[gone]
        return out

    def damaged(self) -> list[Damaged]:
        """The plan files found damaged since the last call (each is looked at again when
        it is next read)."""
        found = [(k, p) for k, (_sig, p) in self._parsed.items() if isinstance(p, Damaged)]
        for key, _plan in found:
            del self._parsed[key]
        return [p for _k, p in found]

    def get(self, batch: str) -> Plan | None:
        """The batch's plan, or None while there is none, it is damaged, or it is another
        batch's (a name that differs only in case)."""
        plan = self.state(batch)
        return plan if isinstance(plan, Plan) else None

    def state(self, batch: str) -> Plan | Damaged | None:
        """The batch's plan, what is wrong with it, or None if it has none (yet)."""
        plan = self._read(plan_path(self.layout, batch))
        if isinstance(plan, Plan) and not same_name(plan.source, batch):
            return None
        return plan

    def _read(self, path: Path) -> Plan | Damaged | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            self._parsed.pop(path.name, None)
            return None
        except OSError as exc:
            return Damaged(path, exc.strerror or str(exc))
        sig = (st.st_size, st.st_mtime_ns)
        known = self._parsed.get(path.name)
        if known is not None and known[0] == sig:
            return known[1]
        try:
            plan: Plan | Damaged = load_plan(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            plan = Damaged(path, str(exc))
        self._parsed[path.name] = (sig, plan)
        return plan


def read_plans(layout: Layout, *, cancelled: bool = True) -> list[Plan]:
    """Every plan ever accepted on this root (one look; a daemon keeps a `PlanBook`)."""
    return PlanBook(layout).plans(cancelled=cancelled)
