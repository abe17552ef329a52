"""`emif export`: the data set's metadata in the form the ecosystem loads directly.

`GENERATIONS/metadata.jsonl` follows the Hugging Face `datasets` "imagefolder" convention: one
row per generated image, its `file_name` relative to the metadata file, so
``load_dataset("imagefolder", data_dir="<root>/GENERATIONS")`` yields each image with its
nation, category, prompt, seed, model, sizes and hashes, and the paths of its upscale and
cut-outs (relative to the metadata file too) with the segments' areas and scores. They are
not named ``*_file_name``: the loader would take them for image columns, and it refuses those
that lead out of the metadata file's folder. A data-set card, `GENERATIONS/README.md`,
gives counts, the recipe, the models and the dates.

`<root>/metadata.csv` holds the same rows for pandas and spreadsheets, its paths relative to
the root. It cannot sit beside the JSONL: the loader refuses a folder with metadata files of
two formats.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emif_daemon.dataset.catalog import (
    Entry,
    PlanIndex,
    entries,
    generation_model,
    image_size,
    list_group,
    list_groups,
    nation_category,
)
from emif_daemon.dataset.gallery import render
from emif_daemon.share.atomic import atomic_write
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.failure_records import FailureLog
from emif_daemon.share.layout import STAGES, Layout

JSONL = "metadata.jsonl"
CSV = "metadata.csv"
CARD = "README.md"
# Every column, in order, with what it holds (the card lists them).
COLUMNS: dict[str, str] = {
    "file_name": "the generated image (imagefolder's image column)",
    "nation": "first folder under GENERATIONS/",
    "category": "second folder under GENERATIONS/",
    "prompt": "the prompt sent, template applied",
    "negative_prompt": "the negative prompt sent",
    "seed": "the seed sent",
    "model": "the checkpoint asked for (else the one the server reported)",
    "width": "pixels",
    "height": "pixels",
    "sha256": "of the image file",
    "source": "the prompts file it came from",
    "host": "the machine that generated it",
    "started_at": "UTC",
    "finished_at": "UTC",
    "seconds": "generation time",
    "upscaled_path": "its upscale, or null",
    "upscaled_width": "pixels",
    "upscaled_height": "pixels",
    "upscaled_sha256": "of the upscale file",
    "segment_model": "Segment Anything model type",
    "cutout_paths": "its cut-outs (RGBA PNGs), largest first",
    "cutout_areas": "pixels per cut-out, in the upscale",
    "cutout_bboxes": "[x, y, width, height] per cut-out, in the upscale",
    "cutout_predicted_ious": "the model's own quality estimate per cut-out",
    "cutout_stability_scores": "mask stability per cut-out",
}
GENERATION_FIELDS = ("source", "host", "started_at", "finished_at", "seconds")


@dataclass(frozen=True)
class ExportReport:
    rows: int
    jsonl: Path
    csv: Path
    card: Path


def _sha256(meta: Mapping[str, Any], key: str, path: Path) -> str | None:
    value = meta.get(key)
    if isinstance(value, str) and value:
        return value
    try:  # no sidecar (an image put there by hand): hash the file itself
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def _list(records: list[dict[str, Any]], key: str) -> list[Any]:
    return [r.get(key) for r in records]


def row(root: Path, entry: Entry) -> dict[str, Any]:
    """One generated image and what became of it; paths relative to the root."""
    assert entry.generation is not None
    gen, up, cuts = entry.generation, entry.upscaled, entry.cutouts
    nation, category = nation_category(entry.group)
    size = image_size(root / gen.rel)
    up_size = image_size(root / up.rel) if up else None
    segments = cuts.segments if cuts else []
    out: dict[str, Any] = {
        "file_name": gen.rel,
        "nation": nation,
        "category": category,
        "prompt": gen.meta.get("prompt"),
        "negative_prompt": gen.meta.get("negative_prompt"),
        "seed": gen.meta.get("seed"),
        "model": generation_model(gen.meta),
        "width": size[0] if size else None,
        "height": size[1] if size else None,
        "sha256": _sha256(gen.meta, "output_sha256", root / gen.rel),
        **{key: gen.meta.get(key) for key in GENERATION_FIELDS},
        "upscaled_path": up.rel if up else None,
        "upscaled_width": up_size[0] if up_size else None,
        "upscaled_height": up_size[1] if up_size else None,
        "upscaled_sha256": _sha256(up.meta, "output_sha256", root / up.rel) if up else None,
        "segment_model": cuts.manifest.get("model_type") if cuts else None,
        "cutout_paths": [f"{cuts.rel}/{s['file']}" for s in segments] if cuts else [],
        "cutout_areas": _list(segments, "area"),
        "cutout_bboxes": _list(segments, "bbox"),
        "cutout_predicted_ious": _list(segments, "predicted_iou"),
        "cutout_stability_scores": _list(segments, "stability_score"),
    }
    return {key: out.get(key) for key in COLUMNS}


def relative_to(folder: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The row with its paths relative to `folder` (from the root), as the JSONL needs."""

    def rel(path: str) -> str:
        return posixpath.relpath(path, folder)

    return {
        **doc,
        "file_name": rel(doc["file_name"]),
        "upscaled_path": rel(doc["upscaled_path"]) if doc["upscaled_path"] else None,
        "cutout_paths": [rel(p) for p in doc["cutout_paths"]],
    }


def dataset_entries(layout: Layout) -> Iterator[Entry]:
    plans = PlanIndex(layout)
    for group in list_groups(layout):
        yield from entries(layout, list_group(layout, group), plans)


def jsonl_bytes(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def csv_bytes(rows: Iterable[dict[str, Any]]) -> bytes:
    """Lists as JSON text, null as empty: what pandas and spreadsheets read."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {
                k: json.dumps(v) if isinstance(v, list) else ("" if v is None else v)
                for k, v in r.items()
            }
        )
    return buf.getvalue().encode()


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M"


def _first(items: Iterable[Entry], pick: Any) -> Any:
    return next((v for e in items if (v := pick(e))), None)


def recipe_files(
    gens: list[Mapping[str, Any]], ups: list[Mapping[str, Any]]
) -> list[tuple[str, str, int]]:
    """(step, recipe file, images) for each JSON recipe the sidecars say was used, in order:
    txt2img, then each upscale pass. Images made before sidecars named them count as none."""
    counts: Counter[tuple[str, str]] = Counter()
    for meta in gens:
        if isinstance(meta.get("recipe"), str):
            counts["txt2img", meta["recipe"]] += 1
    for meta in ups:
        files = meta.get("recipes")
        for n, file in enumerate(files if isinstance(files, list) else [], 1):
            if isinstance(file, str):
                counts[f"upscale pass {n}", file] += 1
    return [(step, file, n) for (step, file), n in sorted(counts.items())]


def card_view(layout: Layout, found: list[Entry], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the data-set card says: counts, recipe, models, dates."""
    gens = [e.generation.meta for e in found if e.generation]
    ups = [e.upscaled.meta for e in found if e.upscaled]
    cuts = [e.cutouts.manifest for e in found if e.cutouts]
    payload = _first(found, lambda e: e.generation and e.generation.meta.get("payload"))
    computed = ("prompt", "negative_prompt", "seed")  # per image: in the rows
    recipe = {k: v for k, v in (payload or {}).items() if k not in computed}
    passes = _first(found, lambda e: e.upscaled and e.upscaled.meta.get("passes")) or []
    pass_models = Counter(
        str(p[k])
        for m in ups
        for p in m.get("passes") or []
        if isinstance(p, dict)
        for k in ("upscaler", "model")
        if p.get(k)
    )
    recipes = recipe_files(gens, ups)
    segment_keys = ("model_type", "checkpoint_sha256", "cutout", "padding", "min_area_fraction")
    segment = {k: cuts[0].get(k) for k in segment_keys} if cuts else {}
    times = [
        str(t)
        for m in [*gens, *ups, *cuts]
        for k in ("started_at", "finished_at")
        if (t := m.get(k))
    ]
    failed = {stage: len(FailureLog(layout.failed, stage).keys()) for stage in STAGES}
    return {
        "name": layout.root.name,
        "built_at": utc_stamp(),
        "size_category": _size_category(len(rows)),
        "counts": {
            "images": len(rows),
            "upscaled": sum(1 for r in rows if r["upscaled_path"]),
            "segmented": len(cuts),
            "cutouts": sum(len(r["cutout_paths"]) for r in rows),
            "nations": len({r["nation"] for r in rows}),
            "categories": len({r["category"] for r in rows}),
        },
        "groups": sorted(Counter(f"{r['nation']}/{r['category']}" for r in rows).items()),
        "failed": failed,
        "generation_models": Counter(m for g in gens if (m := generation_model(g))).most_common(),
        "pass_models": pass_models.most_common(),
        "segment": {k: v for k, v in segment.items() if v is not None},
        "recipe": json.dumps(recipe, indent=2, ensure_ascii=False),
        "recipe_files": recipes,
        "passes": json.dumps(passes, indent=2, ensure_ascii=False),
        "first": min(times, default=None),
        "last": max(times, default=None),
        "columns": COLUMNS,
    }


def export_dataset(layout: Layout) -> ExportReport:
    """Write the JSONL, the CSV and the card; every file replaced atomically."""
    found = [e for e in dataset_entries(layout) if e.generation is not None]
    rows = [row(layout.root, e) for e in found]
    folder = layout.generations.relative_to(layout.root).as_posix()
    jsonl, table, card = layout.generations / JSONL, layout.root / CSV, layout.generations / CARD
    atomic_write(jsonl, jsonl_bytes(relative_to(folder, r) for r in rows))
    atomic_write(table, csv_bytes(rows))
    atomic_write(card, render("dataset_card.md.j2", **card_view(layout, found, rows)))
    return ExportReport(len(rows), jsonl, table, card)
