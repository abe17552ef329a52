"""`emif gallery`: a static gallery of every image through every stage, under <root>/gallery/.

It opens from the shared folder in any browser, with no server: `index.html` is the overview
(counts per stage and per nation/category, failures with their reasons, when it was built),
and each group has a page showing, for every image, the generation, its upscale and its
cut-outs side by side with the prompt, seed, model, timings and hashes from the sidecars.
Pages link to the full-size files by relative path (gallery_views.py).

Rebuilds are incremental. A group's page is rendered again only when the signature of its
files (names, sizes, mtimes; catalog.GroupListing) changed since the last build, as kept in
`gallery/.state.json`; thumbnails are made only for new or replaced images (thumbnails.py).
Templates are Jinja2 files in `emif_daemon/templates/`, autoescaped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from emif_daemon import __version__
from emif_daemon.dataset import thumbnails
from emif_daemon.dataset.catalog import (
    Entry,
    GroupListing,
    PlanIndex,
    entries,
    failure_stem,
    image_size,
    list_group,
    list_groups,
)
from emif_daemon.dataset.gallery_pages import (
    EntryThumbs,
    GroupSummary,
    Links,
    entry_view,
    group_title,
    overview_view,
    summarize,
)
from emif_daemon.dataset.thumbnails import Thumbnailer
from emif_daemon.share.atomic import atomic_write, atomic_write_json
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.failure_records import FailureLog, FailureRecord
from emif_daemon.share.layout import STAGES, Layout

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATE = ".state.json"
INDEX = "index.html"
PAGE_VERSION = "1"  # change it when the views change: every page is rendered again


def _never() -> bool:
    return False


def _nothing() -> None:
    """No lock to keep fresh (a test, or a build nobody else can start)."""


@dataclass
class BuildReport:
    groups: int = 0  # groups whose files were looked at
    pages_written: int = 0  # the overview counts
    thumbnails_made: int = 0
    thumbnails_removed: int = 0
    seconds: float = 0.0
    interrupted: bool = False  # stopped before every group was done; the next build goes on

    def summary(self) -> str:
        done = "stopped early, " if self.interrupted else ""
        return (
            f"gallery: {done}{self.groups} group(s) checked, {self.pages_written} page(s) "
            f"written, {self.thumbnails_made} thumbnail(s) made in {self.seconds:.2f} s"
        )


def page_rel(group: str) -> str:
    """A group's page, relative to the gallery folder."""
    return f"pages/{group}.html" if group else "top-level.html"


def thumbs_rel(group: str) -> str:
    return f"thumbs/{group}" if group else "thumbs"


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("emif_daemon.dataset", "templates"),
        autoescape=jinja2.select_autoescape(("html.j2",)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context: Any) -> bytes:
    return environment().get_template(template).render(version=__version__, **context).encode()


@functools.cache
def fingerprint() -> str:
    """Changes when the templates, the views or the thumbnails change: pages are made again."""
    digest = hashlib.sha256(f"{__version__}:{PAGE_VERSION}:{thumbnails.VERSION}".encode())
    for path in sorted(TEMPLATES.glob("*.j2")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


# -- state between builds ------------------------------------------------------------------


@dataclass
class GroupState:
    signature: str
    summary: GroupSummary


class GalleryState:
    """What the last builds made: each group's signature and summary (`.state.json`)."""

    def __init__(self, path: Path, groups: dict[str, GroupState]) -> None:
        self.path = path
        self.groups = groups

    @classmethod
    def load(cls, folder: Path) -> GalleryState:
        """Tolerant: a missing or damaged state only means every page is checked again."""
        path = folder / STATE
        groups: dict[str, GroupState] = {}
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            doc = json.loads(path.read_bytes())
            for group, item in doc["groups"].items():
                groups[group] = GroupState(
                    str(item["signature"]), GroupSummary.from_json(item["summary"])
                )
        return cls(path, groups)

    def save(self) -> None:
        doc = {
            "groups": {
                group: {"signature": s.signature, "summary": s.summary.to_json()}
                for group, s in sorted(self.groups.items())
            }
        }
        atomic_write_json(self.path, doc)


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` atomically unless the file holds it already; True if written."""
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return False
    atomic_write(path, data)
    return True


# -- building ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupPage:
    html: bytes
    summary: GroupSummary
    made: int
    removed: int


class Builder:
    """One build: which groups to look at, rendering each, then the overview."""

    def __init__(
        self,
        layout: Layout,
        *,
        host: str,
        should_stop: Callable[[], bool],
        beat: Callable[[], None],
    ) -> None:
        self.layout = layout
        self.root = layout.root
        self.host = host
        self.should_stop = should_stop
        self.beat = beat
        self.plans = PlanIndex(layout)
        self.gallery_rel = layout.gallery.relative_to(layout.root).as_posix()

    def rel(self, path_in_gallery: str) -> str:
        """A path in the gallery folder, relative to the root."""
        return f"{self.gallery_rel}/{path_in_gallery}"

    def _thumbs(self, entry: Entry, maker: Thumbnailer, folder: str) -> EntryThumbs:
        gen = up = sheet = None
        if entry.generation:
            source = self.root / entry.generation.rel
            gen = maker.image(entry.stem, "generation", source, entry.generation.stat)
        if entry.upscaled:
            source = self.root / entry.upscaled.rel
            up = maker.image(entry.stem, "upscale", source, entry.upscaled.stat)
        if entry.cutouts and entry.cutouts.segments:
            files = [s["file"] for s in entry.cutouts.segments]
            cuts = entry.cutouts
            sheet = maker.sheet(entry.stem, self.root / cuts.rel, files, cuts.stat)
        return EntryThumbs(folder, gen, up, sheet)

    def group_page(self, listing: GroupListing) -> GroupPage | None:
        """The group's page and its thumbnails; None if told to stop on the way."""
        group = listing.group
        items = entries(self.layout, listing, self.plans)
        folder = thumbs_rel(group)
        maker = Thumbnailer(self.layout.gallery / folder)
        link = Links(self.rel(page_rel(group)))
        views, previews = [], {}
        for index, entry in enumerate(items, 1):
            if self.should_stop():
                return None
            self.beat()
            thumbs = self._thumbs(entry, maker, self.rel(folder))
            previews[entry.stem] = thumbs.path(thumbs.generation)
            sizes = {
                "generation": image_size(self.root / entry.generation.rel)
                if entry.generation
                else None,
                "upscale": image_size(self.root / entry.upscaled.rel) if entry.upscaled else None,
            }
            views.append(entry_view(entry, thumbs, sizes, link, index))
        summary = summarize(items, previews)
        html = render(
            "group.html.j2",
            title=group_title(group),
            group=group,
            overview=link(self.rel(INDEX)),
            entries=views,
            summary=summary.to_json(),
        )
        return GroupPage(html, summary, maker.made, maker.prune())

    def failures(self, state: GalleryState, link: Links) -> list[tuple[FailureRecord, str | None]]:
        """Every failure record, with a link to its entry on a page that exists."""
        out = []
        for stage in STAGES:
            log = FailureLog(self.layout.failed, stage)
            for key in sorted(log.keys()):
                record = log.read(key)
                if record is None:
                    continue
                group, _, name = key.rpartition("/")
                href = None
                if group in state.groups:
                    anchor = quote(failure_stem(stage, name))
                    href = f"{link(self.rel(page_rel(group)))}#{anchor}"
                out.append((record, href))
        return out

    def overview(self, groups: list[str], state: GalleryState) -> bytes:
        rows = []
        for group in groups:
            known = state.groups.get(group)
            summary = known.summary if known else None
            if summary and summary.preview and not (self.root / summary.preview).exists():
                summary = GroupSummary(**{**summary.to_json(), "preview": None})
            rows.append((group, self.rel(page_rel(group)) if known else None, summary))
        link = Links(self.rel(INDEX))
        view = overview_view(
            groups=rows,
            failures=self.failures(state, link),
            built_at=utc_stamp(),
            host=self.host,
            root=str(self.root),
            link=link,
        )
        return render("overview.html.j2", **view)


def build_gallery(
    layout: Layout,
    *,
    groups: Iterable[str] | None = None,
    force: bool = False,
    host: str = "",
    should_stop: Callable[[], bool] = _never,
    beat: Callable[[], None] = _nothing,
) -> BuildReport:
    """Bring the gallery up to date: every group, or only `groups` (the daemon's refresh).

    `force` renders every page looked at again (thumbnails are still reused). `should_stop`
    is asked between images; what was done by then is kept, and the rest is done by the
    next build. `beat` is called as work goes on (the lock's heartbeat).
    """
    started = time.monotonic()
    report = BuildReport()
    state = GalleryState.load(layout.gallery)
    salt = fingerprint()
    present = list_groups(layout)
    asked = set(present if groups is None else groups)
    builder = Builder(layout, host=host, should_stop=should_stop, beat=beat)
    for group in present:
        if group not in asked:
            continue
        if should_stop():
            report.interrupted = True
            break
        beat()
        report.groups += 1
        listing = list_group(layout, group)
        signature = listing.signature(salt)
        page = layout.gallery / page_rel(group)
        known = state.groups.get(group)
        if not force and known and known.signature == signature and page.exists():
            continue
        built = builder.group_page(listing)
        if built is None:
            report.interrupted = True
            break
        report.thumbnails_made += built.made
        report.thumbnails_removed += built.removed
        report.pages_written += write_if_changed(page, built.html)
        state.groups[group] = GroupState(signature, built.summary)
    if groups is None and not report.interrupted:
        for gone in set(state.groups) - set(present):
            del state.groups[gone]
            (layout.gallery / page_rel(gone)).unlink(missing_ok=True)
    report.pages_written += write_if_changed(
        layout.gallery / INDEX, builder.overview(present, state)
    )
    state.save()
    report.seconds = round(time.monotonic() - started, 3)
    return report
