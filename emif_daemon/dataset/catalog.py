"""What the data set holds, read from the root: each image through each stage, grouped by the
folder it sits in. Read-only; the gallery and the export both look through it.

A *group* is a folder path relative to GENERATIONS/ (``Italy/family``); UPSCALED_IMAGES/ and
SEGMENTS/ mirror it. An *entry* is one generation (``Italy_family_1_1``) with its upscale, its
cut-outs and any failure on the way. A generate item that failed has no image but still an
entry, named after the item (``Italy_family_4``), with the prompt and seed it was planned with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from emif_daemon.intake.plans import Plan, PlannedItem, read_plans
from emif_daemon.png import png_size
from emif_daemon.share.failure_records import FailureLog, FailureRecord
from emif_daemon.share.layout import STAGES, UPSCALED_SUFFIX, Layout, is_ignored, is_input_png

Stat = tuple[int, int]  # (size, mtime_ns): what changes when a file is replaced
MANIFEST = "manifest.json"
RECORD_SUFFIX = ".json"  # failure records


def natural_key(text: str) -> list[tuple[int, int, str]]:
    """Sort key that puts ``Italy_family_2`` before ``Italy_family_10``."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part.casefold())
        for part in re.split(r"(\d+)", text)
        if part
    ]


def group_of(key: str) -> str:
    """The group of an item key or a path relative to a stage tree (``Italy/family/x.png``)."""
    parent = str(PurePosixPath(key).parent)
    return "" if parent == "." else parent


def base_stem(name: str) -> str:
    """The entry an upscale or a cut-out folder belongs to: its name less ``_upscaled_1``."""
    return name.removesuffix(UPSCALED_SUFFIX)


def read_json(path: Path) -> dict[str, Any]:
    """A sidecar or manifest; {} when it is missing, unreadable or not a JSON object."""
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(path.read_bytes())
        if isinstance(doc, dict):
            return doc
    return {}


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the PNG header: 24 bytes read, nothing decoded."""
    try:
        with open(path, "rb") as fh:
            return png_size(fh.read(24))
    except OSError:
        return None


def generation_model(meta: Mapping[str, Any]) -> str | None:
    """The checkpoint a generation asked for (Draw Things' ``model``, AUTOMATIC1111's
    override), else the one the server reported having loaded."""
    payload = meta.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    override = payload.get("override_settings")
    override = override if isinstance(override, dict) else {}
    for value in (
        payload.get("model"),
        override.get("sd_model_checkpoint"),
        meta.get("server_model"),
    ):
        if isinstance(value, str) and value:
            return value
    return None


# -- listings: what a group holds, by name and stat only ------------------------------------


def _stats(folder: Path) -> dict[str, Stat]:
    """Files in `folder` that are not temporary, with their size and mtime."""
    return _listed(folder, lambda e: e.path if e.is_file() else None)


def _cutout_stats(folder: Path) -> dict[str, Stat]:
    """Cut-out folders in `folder`, by the stat of their manifest (a folder is published whole)."""
    return _listed(folder, lambda e: os.path.join(e.path, MANIFEST) if e.is_dir() else None)


def _listed(folder: Path, stat_path: Callable[[os.DirEntry[str]], str | None]) -> dict[str, Stat]:
    """Entries of `folder` that are not temporary, by name, with the size and mtime of the
    path `stat_path` gives for each (None: not wanted)."""
    out: dict[str, Stat] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return out
    for entry in entries:
        if is_ignored(entry.name):
            continue
        with contextlib.suppress(OSError):
            path = stat_path(entry)
            if path is not None:
                st = os.stat(path)
                out[entry.name] = (st.st_size, st.st_mtime_ns)
    return out
    for entry in entries:
        if is_ignored(entry.name):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir():
                st = os.stat(os.path.join(entry.path, MANIFEST))
                out[entry.name] = (st.st_size, st.st_mtime_ns)
    return out


@dataclass(frozen=True)
class GroupListing:
    """Every file of one group that the gallery shows, by name and stat."""

    group: str
    generations: Mapping[str, Stat]
    upscaled: Mapping[str, Stat]
    cutouts: Mapping[str, Stat]
    failures: Mapping[str, Mapping[str, Stat]]  # stage → record name (less .json) → stat

    def signature(self, salt: str = "") -> str:
        """Changes whenever a file the group's page shows is added, replaced or removed."""
        doc = [
            salt,
            sorted(self.generations.items()),
            sorted(self.upscaled.items()),
            sorted(self.cutouts.items()),
            sorted((stage, sorted(names.items())) for stage, names in self.failures.items()),
        ]
        return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def list_group(layout: Layout, group: str) -> GroupListing:
    failures = {}
    for stage in STAGES:
        records = _stats(layout.failed / stage / group)
        failures[stage] = {
            name.removesuffix(RECORD_SUFFIX): stat
            for name, stat in records.items()
            if name.endswith(RECORD_SUFFIX)
        }
    return GroupListing(
        group,
        _stats(layout.generations / group),
        _stats(layout.upscaled / group),
        _cutout_stats(layout.segments / group),
        failures,
    )


def _folders_holding(top: Path, want: Callable[[str], bool]) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not is_ignored(d)]
        if any(want(name) for name in filenames):
            rel = Path(dirpath).relative_to(top).as_posix()
            found.add("" if rel == "." else rel)
    return found


def list_groups(layout: Layout) -> list[str]:
    """Every folder with an image under GENERATIONS/ or UPSCALED_IMAGES/, or a failure record."""
    found = _folders_holding(layout.generations, is_input_png)
    found |= _folders_holding(layout.upscaled, is_input_png)
    for stage in STAGES:
        found |= _folders_holding(layout.failed / stage, lambda n: n.endswith(RECORD_SUFFIX))
    return sorted(found, key=natural_key)


# -- entries: a group's images with their sidecars ------------------------------------------


@dataclass(frozen=True)
class Image:
    rel: str  # from the root, POSIX
    stat: Stat
    meta: Mapping[str, Any]  # its sidecar; {} when it has none


@dataclass(frozen=True)
class Cutouts:
    rel: str  # the folder, from the root
    stat: Stat  # of its manifest
    manifest: Mapping[str, Any]

    @property
    def segments(self) -> list[dict[str, Any]]:
        """The manifest's cut-outs (largest first), those naming a file in the folder."""
        records = self.manifest.get("segments")
        if not isinstance(records, list):
            return []
        return [
            r
            for r in records
            if isinstance(r, dict)
            and isinstance(r.get("file"), str)
            and r["file"] == PurePosixPath(r["file"]).name
        ]


@dataclass
class Entry:
    group: str
    stem: str
    generation: Image | None = None
    upscaled: Image | None = None
    cutouts: Cutouts | None = None
    failures: list[FailureRecord] = field(default_factory=list)
    planned: PlannedItem | None = None  # for a generate item that failed: what was asked


class PlanIndex:
    """What a generate item was planned with, looked up by key in `.emif/jobs/` (read once,
    on first use; plans keep jobs, so a lookup costs a pass over jobs, not items)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._plans: list[Plan] | None = None

    def _load(self) -> list[Plan]:
        if self._plans is None:
            self._plans = read_plans(self.layout)
        return self._plans

    def __call__(self, key: str) -> PlannedItem | None:
        folder, _, name = key.rpartition("/")
        nation, _, category = folder.partition("/")
        number = name.removeprefix(f"{nation}_{category}_")
        if number == name or not number.isdigit():
            return None
        index = int(number)
        for plan in self._load():
            for job in plan.jobs:
                if (job.nation, job.category) == (nation, category) and (
                    job.first <= index < job.first + job.count
                ):
                    return job.item(index, plan.sha256)
        return None


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def failure_stem(stage: str, name: str) -> str:
    """Record name → entry: generate records are named by item, the others by input PNG."""
    if stage == "generate":
        return name
    return base_stem(name.rpartition(".")[0] if name.lower().endswith(".png") else name)


def entries(
    layout: Layout,
    listing: GroupListing,
    planned: Callable[[str], PlannedItem | None] = lambda _key: None,
) -> list[Entry]:
    """The group's entries in natural order, sidecars and manifests read."""
    group = listing.group
    found: dict[str, Entry] = {}

    def entry(stem: str) -> Entry:
        return found.setdefault(stem, Entry(group, stem))

    def image(top: Path, top_name: str, name: str, names: Mapping[str, Stat]) -> Image:
        stem = name[: -len(".png")]
        sidecar = f"{stem}.json"
        meta = read_json(top / group / sidecar) if sidecar in names else {}
        return Image(_join(top_name, group, name), names[name], meta)

    for name in listing.generations:
        if is_input_png(name):
            img = image(layout.generations, layout.generations.name, name, listing.generations)
            entry(name[: -len(".png")]).generation = img
    for name in listing.upscaled:
        if is_input_png(name):
            img = image(layout.upscaled, layout.upscaled.name, name, listing.upscaled)
            entry(base_stem(name[: -len(".png")])).upscaled = img
    for name, stat in listing.cutouts.items():
        manifest = read_json(layout.segments / group / name / MANIFEST)
        entry(base_stem(name)).cutouts = Cutouts(
            _join(layout.segments.name, group, name), stat, manifest
        )
    for stage, names in listing.failures.items():
        log = FailureLog(layout.failed, stage)
        for name in names:
            key = _join(group, name)
            record = log.read(key)
            if record is None:
                continue
            item = entry(failure_stem(stage, name))
            item.failures.append(record)
            if stage == "generate":
                item.planned = planned(key)
    return sorted(found.values(), key=lambda e: natural_key(e.stem))


def nation_category(group: str) -> tuple[str, str]:
    """``Italy/family`` → (Italy, family); other depths keep what they have."""
    nation, _, category = group.partition("/")
    return nation, category
