"""What the gallery's pages say, as plain data for the templates. Pure: no file is read here.

Every link is a relative URL from the page to a file under the root (`Links`), so the gallery
opens from `file://` on any machine that mounts the share, wherever it is mounted.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

from emif_daemon.dataset.catalog import Entry, Image, generation_model, nation_category
from emif_daemon.dataset.thumbnails import SHEET_MAX, Thumb, sheet_layout
from emif_daemon.share.failure_records import FailureRecord

HASH_SHOWN = 12  # hex digits shown; the whole hash is in the title


@dataclass(frozen=True)
class Links:
    """Relative URLs from one page; every path is relative to the root, POSIX."""

    page: str  # the page itself, e.g. gallery/pages/Italy/family.html

    def __call__(self, target: str) -> str:
        return quote(posixpath.relpath(target, posixpath.dirname(self.page) or "."))


@dataclass(frozen=True)
class EntryThumbs:
    """An entry's thumbnails, as names in `folder` (relative to the root)."""

    folder: str
    generation: Thumb | None = None
    upscaled: Thumb | None = None
    sheet: Thumb | None = None

    def path(self, thumb: Thumb | None) -> str | None:
        return f"{self.folder}/{thumb.name}" if thumb is not None and thumb.name else None


@dataclass(frozen=True)
class GroupSummary:
    """A group's counts for the overview; kept in the gallery's state between builds."""

    generated: int = 0
    upscaled: int = 0
    segmented: int = 0
    cutouts: int = 0
    failed: int = 0
    preview: str | None = None  # a thumbnail, relative to the root

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> GroupSummary:
        counts = {k: v for k, v in doc.items() if k != "preview" and isinstance(v, int) and v >= 0}
        preview = doc.get("preview")
        return cls(**counts, preview=preview if isinstance(preview, str) else None)


def summarize(entries: list[Entry], previews: Mapping[str, str | None]) -> GroupSummary:
    preview = next((p for e in entries if (p := previews.get(e.stem))), None)
    return GroupSummary(
        generated=sum(e.generation is not None for e in entries),
        upscaled=sum(e.upscaled is not None for e in entries),
        segmented=sum(e.cutouts is not None for e in entries),
        cutouts=sum(len(e.cutouts.segments) for e in entries if e.cutouts),
        failed=sum(bool(e.failures) for e in entries),
        preview=preview,
    )


def short_hash(value: object) -> dict[str, str] | None:
    if not isinstance(value, str) or not value:
        return None
    return {"short": value[:HASH_SHOWN], "full": value}


def _number(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return f"{value:g}"


def _size(size: tuple[int, int] | None) -> str:
    return f"{size[0]}×{size[1]}" if size else ""


def _failure(record: FailureRecord) -> dict[str, Any]:
    attempts = f"{record.attempts} attempt{'' if record.attempts == 1 else 's'}"
    return {
        "stage": record.stage,
        "item": record.item,
        "reason": record.reason,
        "attempts": record.attempts,
        "host": record.host,
        "failed_at": record.failed_at,
        "details": ", ".join(p for p in (attempts, record.host, record.failed_at) if p),
    }


@dataclass(frozen=True)
class Missing:
    """Why a panel has no image."""

    note: str
    failed: bool = False


@dataclass(frozen=True)
class Panel:
    """One stage of an entry as shown: a thumbnail linking to the full size, or a note."""

    kind: str
    label: str
    note: str = ""
    href: str | None = None  # the full-size file (or the cut-out folder)
    src: str | None = None  # the thumbnail
    detail: str = ""
    name: str = ""
    width: int = 0  # cut-out sheets only: their size on the page and their image map
    height: int = 0
    areas: tuple[dict[str, str], ...] = ()
    map_name: str = ""
    failed: bool = False  # this stage failed for the image


def _image_panel(
    kind: str,
    image: Image | None,
    thumb: Thumb | None,
    thumbs: EntryThumbs,
    size: tuple[int, int] | None,
    missing: Missing,
    link: Links,
) -> Panel:
    if image is None:
        return Panel(kind, kind, note=missing.note, failed=missing.failed)
    src = thumbs.path(thumb)
    return Panel(
        kind,
        kind,
        note=(thumb.problem if thumb else None) or ("" if src else "no thumbnail"),
        href=link(image.rel),
        src=link(src) if src else None,
        detail=_size(size),
        name=posixpath.basename(image.rel),
    )


def _cutout_panel(
    entry: Entry, thumbs: EntryThumbs, missing: Missing, link: Links, map_name: str
) -> Panel:
    cutouts = entry.cutouts
    if cutouts is None:
        return Panel("cutouts", "cut-outs", note=missing.note, failed=missing.failed)
    segments = cutouts.segments
    href = link(cutouts.rel + "/")
    sheet = thumbs.path(thumbs.sheet)
    if not segments or sheet is None:
        note = "no object kept" if not segments else "no thumbnail"
        detail = f"{len(segments)} cut-outs"
        return Panel("cutouts", "cut-outs", note=note, href=href, detail=detail)
    layout = sheet_layout(len(segments))
    areas = []
    for index, seg in enumerate(segments[: layout.count]):
        left, top, right, bottom = layout.box(index)
        score = _number(seg.get("predicted_iou"))
        areas.append(
            {
                "coords": f"{left},{top},{right},{bottom}",
                "href": link(f"{cutouts.rel}/{seg['file']}"),
                "title": f"{seg['file']} · area {seg.get('area', '?')} px"
                + (f" · IoU {score}" if score else ""),
            }
        )
    shown = f", largest {SHEET_MAX} shown" if len(segments) > SHEET_MAX else ""
    return Panel(
        "cutouts",
        "cut-outs",
        note=(thumbs.sheet.problem if thumbs.sheet else None) or "",
        href=href,
        src=link(sheet),
        detail=f"{len(segments)} cut-outs{shown}",
        width=layout.size[0],
        height=layout.size[1],
        areas=tuple(areas),
        map_name=map_name,
    )


def _missing(entry: Entry, stage: str, waiting: str, upstream: str | None = None) -> Missing:
    """What a panel without an image says: this stage failed, an earlier one did, or wait."""
    stages = [f.stage for f in entry.failures]
    if stage in stages:
        return Missing(f"{stage} failed", failed=True)
    if upstream in stages:
        return Missing(f"nothing to {stage}: {upstream} failed")
    return Missing(waiting)


def _facts(entry: Entry) -> list[dict[str, str]]:
    gen = entry.generation.meta if entry.generation else {}
    up = entry.upscaled.meta if entry.upscaled else {}
    cut = entry.cutouts.manifest if entry.cutouts else {}
    planned = entry.planned
    prompt = gen.get("prompt", planned.prompt if planned else None)
    negative = gen.get("negative_prompt", planned.negative_prompt if planned else None)
    seed = gen.get("seed", planned.seed if planned else None)
    model = generation_model(gen) or (
        generation_model({"payload": planned.payload}) if planned else None
    )
    timings = []
    if (s := _number(gen.get("seconds"))) is not None:
        server = _number(gen.get("server_seconds"))
        timings.append(f"generate {s} s" + (f" (server {server} s)" if server else ""))
    if (s := _number(up.get("seconds"))) is not None:
        timings.append(f"upscale {s} s")
    if (s := _number(cut.get("seconds"))) is not None:
        timings.append(f"segment {s} s")
    hosts = [h for h in (gen.get("host"), up.get("host"), cut.get("host")) if isinstance(h, str)]
    source = gen.get("source") or next((f.batch for f in entry.failures if f.batch), None)
    rows = [
        ("prompt", prompt),
        ("negative prompt", negative or None),
        ("seed", seed),
        ("model", model),
        ("segment model", cut.get("model_type")),
        ("timings", " · ".join(timings) or None),
        ("finished", cut.get("finished_at") or up.get("finished_at") or gen.get("finished_at")),
        ("hosts", " → ".join(dict.fromkeys(hosts)) or None),
        ("prompts file", source),
    ]
    return [{"label": label, "value": str(value)} for label, value in rows if value is not None]


def _hashes(entry: Entry) -> list[dict[str, Any]]:
    gen = entry.generation.meta if entry.generation else {}
    up = entry.upscaled.meta if entry.upscaled else {}
    cut = entry.cutouts.manifest if entry.cutouts else {}

    def check(source: object, made: object) -> str:
        if not (isinstance(source, str) and isinstance(made, str)):
            return ""
        return "matches" if source == made else "differs!"

    rows = [
        ("generation", gen.get("output_sha256"), ""),
        (
            "upscale source",
            up.get("source_sha256"),
            check(up.get("source_sha256"), gen.get("output_sha256")),
        ),
        ("upscale", up.get("output_sha256"), ""),
        (
            "cut-out source",
            cut.get("source_sha256"),
            check(cut.get("source_sha256"), up.get("output_sha256")),
        ),
    ]
    out = []
    for label, value, note in rows:
        shown = short_hash(value)
        if shown:
            out.append({"label": label, **shown, "note": note})
    return out


def entry_view(
    entry: Entry,
    thumbs: EntryThumbs,
    sizes: Mapping[str, tuple[int, int] | None],
    link: Links,
    index: int = 0,
) -> dict[str, Any]:
    """One image through every stage: three panels side by side, its facts, its failures."""
    panels = [
        _image_panel(
            "generation",
            entry.generation,
            thumbs.generation,
            thumbs,
            sizes.get("generation"),
            _missing(entry, "generate", "not generated yet"),
            link,
        ),
        _image_panel(
            "upscale",
            entry.upscaled,
            thumbs.upscaled,
            thumbs,
            sizes.get("upscale"),
            _missing(entry, "upscale", "not upscaled yet", "generate"),
            link,
        ),
        _cutout_panel(
            entry,
            thumbs,
            _missing(entry, "segment", "not cut out yet", "upscale"),
            link,
            f"cuts-{index}",
        ),
    ]
    return {
        "stem": entry.stem,
        "anchor": entry.stem,
        "panels": panels,
        "facts": _facts(entry),
        "hashes": _hashes(entry),
        "failures": [_failure(f) for f in entry.failures],
    }


def group_title(group: str) -> str:
    nation, category = nation_category(group)
    if not group:
        return "top level"
    return f"{nation} · {category}" if category else nation


def overview_view(
    *,
    groups: list[tuple[str, str | None, GroupSummary | None]],
    failures: list[tuple[FailureRecord, str | None]],
    built_at: str,
    host: str,
    root: str,
    link: Links,
    failures_shown: int = 500,
) -> dict[str, Any]:
    """The overview: totals per stage, a row per group, every failure with its reason.

    `groups` holds (group, its page or None, its summary or None); `failures` each record
    with the link to its entry, or None.
    """
    rows = []
    counts = ("generated", "upscaled", "segmented", "cutouts", "failed")
    sums = dict.fromkeys(counts, 0)
    for group, page, known in groups:
        summary = known or GroupSummary()
        for key in counts:
            sums[key] += getattr(summary, key)
        nation, category = nation_category(group)
        rows.append(
            {
                "title": group_title(group),
                "nation": nation,
                "category": category,
                "href": link(page) if page else None,
                "preview": link(summary.preview) if summary.preview else None,
                "built": known is not None,
                **{k: getattr(summary, k) for k in counts},
            }
        )
    shown = [{**_failure(record), "href": href} for record, href in failures[:failures_shown]]
    return {
        "built_at": built_at,
        "host": host,
        "root": root,
        "totals": sums,
        "groups": rows,
        "failures": shown,
        "failures_more": max(0, len(failures) - failures_shown),
        "failed_records": len(failures),
    }
