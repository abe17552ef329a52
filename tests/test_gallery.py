"""The gallery (docs/architecture.md#the-gallery): every image through every stage, opened from
file:// with no server, rebuilt incrementally, refreshed by the daemon one host at a time."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import structlog
from PIL import Image

from emif_daemon.dataset.gallery import BuildReport, build_gallery
from emif_daemon.dataset.gallery_refresher import GalleryRefresher, gallery_lock
from emif_daemon.dataset.thumbnails import SUFFIX, TILE_SHOWN
from emif_daemon.intake.plans import JobPlan, Plan
from emif_daemon.share.clock import ServerClock
from emif_daemon.share.identity import HostIdentity, machine_tag, process_start
from emif_daemon.share.layout import Layout
from emif_daemon.share.root_marker import init_root
from tests import sdapi_server
from tests.fake_dataset import add_failure, add_image, make_dataset, png
from tests.headless import SKIP_REASON, Browser, find_chromium
from tests.helpers import (
    REPO,
    emif_cmd,
    fast_sections,
    log_lines,
    run_emif,
    spawn,
    wait_for,
    write_config,
)
from tests.real_run import EXTRA, FAILED_ITEM, RealRun, real_run

GROUPS = [("Italy", "family"), ("Japan", "working"), ("Peru", "family")]


class Entries(HTMLParser):
    """The text of each <article id=…> of a page, and every href and src."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.urls: list[str] = []
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("href", "src") and v]
        if tag == "article":
            self._current = found.get("id") or ""
            self.text[self._current] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "article":
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self.text[self._current] += data + " "


def parse_page(path: Path) -> Entries:
    parser = Entries()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def broken_links(page: Path) -> list[str]:
    """Relative URLs of a page that do not lead to an existing file or folder."""
    out = []
    for url in parse_page(page).urls:
        parts = urlsplit(url)
        if parts.scheme == "data":  # the empty favicon, so the browser asks for none
            continue
        if parts.scheme or url.startswith("/"):
            out.append(f"{url} (not relative)")
        elif parts.path and not (page.parent / unquote(parts.path)).exists():
            out.append(url)
    return out


def all_pages(gallery: Path) -> list[Path]:
    return [gallery / "index.html", *sorted((gallery / "pages").rglob("*.html"))]


def thumbnails(gallery: Path) -> set[Path]:
    return set((gallery / "thumbs").rglob(f"*{SUFFIX}"))


# -- the real run, through `emif gallery` ----------------------------------------------------


@pytest.fixture(scope="module")
def gallery_run(tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    run = real_run(tmp_path_factory.getbasetemp())
    result = run_emif("gallery", "--config", str(run.config))
    assert result.returncode == 0, result.stderr
    assert "file://" in result.stdout
    return run


def test_every_page_loads_in_chromium_with_the_three_stages_side_by_side(
    gallery_run: RealRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Overview and pages from file://: no console error, no failed load, no broken image, every
    link leads somewhere; each image's generation, upscale and cut-outs sit in one row."""
    binary = find_chromium()
    if binary is None:
        pytest.skip(SKIP_REASON)
    gallery = gallery_run.root / "gallery"
    pages = all_pages(gallery)
    assert len(pages) == 5  # the overview and 2 nations × 2 categories
    shot = tmp_path_factory.getbasetemp() / "gallery.png"
    with Browser(binary, tmp_path_factory.mktemp("chromium")) as browser:
        for page in pages:
            report = browser.open(page)
            assert report.console_errors == [], page
            assert report.failed_loads == [], page
            assert report.broken_images == [], page
            assert report.missing_link_targets() == [], page
            assert report.images > 0, page
            for entry in report.entries:
                if entry["id"] == FAILED_ITEM.rpartition("/")[2]:
                    continue
                panels = entry["panels"]
                assert [p["kind"] for p in panels] == ["generation", "upscale", "cutouts"]
                widths = [p["img"]["width"] if p["img"] else 0 for p in panels]
                assert widths[0] > 100, entry["id"]
                assert widths[1] > 100, entry["id"]
                assert widths[2] >= TILE_SHOWN, entry["id"]  # a sheet of one cut-out or more
                tops = {round(p["box"]["top"]) for p in panels}
                lefts = [p["box"]["left"] for p in panels]
                assert len(tops) == 1, entry["id"]  # side by side, in one row
                assert lefts == sorted(lefts), entry["id"]
        overview = browser.open(gallery / "index.html")
        assert gallery_run.failure().reason in overview.text
        browser.open(gallery / "pages" / "Italy" / "family.html")
        browser.screenshot(shot)
    with Image.open(shot) as img:
        assert img.size == (1400, 1000)
        colours = img.convert("RGB").getcolors(img.width * img.height) or []
        assert len(colours) > 50  # pictures, not a blank page


def test_each_page_lists_every_images_prompt_and_seed(gallery_run: RealRun) -> None:
    sidecars = gallery_run.sidecars()
    assert len(sidecars) == 12
    for rel, sidecar in sidecars.items():
        group, _, name = rel.rpartition("/")
        page = gallery_run.root / "gallery" / "pages" / f"{group}.html"
        text = parse_page(page).text[name.removesuffix(".png")]
        assert sidecar["prompt"] in text
        assert f" {sidecar['seed']} " in f" {text} "
        assert sidecar["output_sha256"][:12] in page.read_text()
    for page in all_pages(gallery_run.root / "gallery"):
        assert broken_links(page) == [], page


def test_a_failed_item_appears_on_its_page_with_its_reason(gallery_run: RealRun) -> None:
    gallery = gallery_run.root / "gallery"
    group, _, item = FAILED_ITEM.rpartition("/")
    reason = gallery_run.failure().reason
    assert "HTTP 500" in reason
    text = " ".join(parse_page(gallery / "pages" / f"{group}.html").text[item].split())
    assert f"generate failed: {reason}" in text
    assert "one more" in text  # what it was planned with: its prompt (and seed)
    overview = (gallery / "index.html").read_text()
    assert reason in " ".join(html.unescape(overview).split())
    assert f'href="pages/{group}.html#{item}"' in overview


# -- incremental rebuilds --------------------------------------------------------------------


def test_new_images_make_only_their_thumbnails_and_the_pages_that_changed(root: Path) -> None:
    make_dataset(root, GROUPS, 4)
    layout = Layout(root)
    first = build_gallery(layout)
    assert first.thumbnails_made == 3 * 4 * 3  # generation, upscale, cut-out sheet
    assert first.pages_written == len(GROUPS) + 1
    before = {p: p.stat().st_mtime_ns for p in all_pages(root / "gallery")}
    thumbs = thumbnails(root / "gallery")
    add_image(root, "Japan", "working", 5)
    add_image(root, "Japan", "working", 6)
    second = build_gallery(layout)
    assert second.thumbnails_made == 2 * 3
    assert second.pages_written == 2  # Japan/working and the overview
    assert thumbnails(root / "gallery") - thumbs == {
        p
        for p in thumbnails(root / "gallery")
        if "_working_5_" in p.name or "_working_6_" in p.name
    }
    changed = {p for p, t in before.items() if p.stat().st_mtime_ns != t}
    assert changed == {root / "gallery" / "index.html", root / "gallery/pages/Japan/working.html"}
    again = build_gallery(layout)
    assert again.thumbnails_made == 0
    assert again.pages_written <= 1  # only the overview's build time can change


def test_a_replaced_image_gets_a_new_thumbnail_and_the_old_one_goes(root: Path) -> None:
    make_dataset(root, GROUPS[:1], 2, upscale=False)
    layout = Layout(root)
    build_gallery(layout)
    image = root / "GENERATIONS" / "Italy" / "family" / "Italy_family_1_1.png"
    old = {p.name for p in thumbnails(root / "gallery") if "_1_1.generation" in p.name}
    image.write_bytes(png(80, 99))
    report = build_gallery(layout)
    new = {p.name for p in thumbnails(root / "gallery") if "_1_1.generation" in p.name}
    assert report.thumbnails_made == 1
    assert report.thumbnails_removed == 1
    assert len(new) == 1
    assert new != old


def test_a_damaged_image_is_named_on_its_page_and_the_build_goes_on(root: Path) -> None:
    make_dataset(root, GROUPS[:1], 2)
    damaged = root / "UPSCALED_IMAGES" / "Italy" / "family" / "Italy_family_2_1_upscaled_1.png"
    damaged.write_bytes(damaged.read_bytes()[:60])
    report = build_gallery(Layout(root))
    assert not report.interrupted
    page = parse_page(root / "gallery" / "pages" / "Italy" / "family.html")
    assert "cannot read Italy_family_2_1_upscaled_1.png" in page.text["Italy_family_2_1"]
    assert broken_links(root / "gallery" / "pages" / "Italy" / "family.html") == []


def test_failures_of_every_stage_show_on_their_entry(root: Path) -> None:
    make_dataset(root, GROUPS[:1], 3)
    add_failure(root, "generate", "Italy/family/Italy_family_9", "HTTP 422: no such model")
    add_failure(root, "upscale", "Italy/family/Italy_family_2_1.png", "pass 1: timed out")
    add_failure(root, "segment", "Italy/family/Italy_family_3_1_upscaled_1.png", "model died")
    build_gallery(Layout(root))
    text = parse_page(root / "gallery" / "pages" / "Italy" / "family.html").text
    assert "generate failed: HTTP 422: no such model" in " ".join(text["Italy_family_9"].split())
    assert "upscale failed: pass 1: timed out" in " ".join(text["Italy_family_2_1"].split())
    assert "segment failed: model died" in " ".join(text["Italy_family_3_1"].split())
    overview = (root / "gallery" / "index.html").read_text()
    for reason in ("HTTP 422: no such model", "pass 1: timed out", "model died"):
        assert reason in overview


def test_links_are_relative_and_still_work_when_the_share_is_mounted_elsewhere(
    tmp_path: Path,
) -> None:
    """Names with spaces, accents, '&' and '#' are quoted; moving the root breaks nothing."""
    root = tmp_path / "share one"
    make_dataset(root, [("Côte d'Ivoire", "family & friends #2"), ("日本", "working")], 2)
    build_gallery(Layout(root))
    moved = tmp_path / "mounted" / "elsewhere"
    shutil.copytree(root, moved)
    pages = all_pages(moved / "gallery")
    assert len(pages) == 3
    for page in pages:
        assert broken_links(page) == [], page
        assert str(root) not in page.read_text().replace(f"<code>{root}</code>", "")


def test_a_build_told_to_stop_keeps_its_work_and_the_next_one_finishes(root: Path) -> None:
    make_dataset(root, GROUPS, 3)
    calls = 0

    def stop_soon() -> bool:
        nonlocal calls
        calls += 1
        return calls > 5

    cut = build_gallery(Layout(root), should_stop=stop_soon)
    assert cut.interrupted
    rest = build_gallery(Layout(root))
    assert not rest.interrupted
    assert cut.thumbnails_made + rest.thumbnails_made == 3 * 3 * 3
    assert len(all_pages(root / "gallery")) == len(GROUPS) + 1


def test_a_refresh_of_some_groups_leaves_the_others_to_emif_gallery(root: Path) -> None:
    """The daemon's refresh builds what its work touched, never a whole gallery at once."""
    make_dataset(root, GROUPS, 2)
    report = build_gallery(Layout(root), groups=["Peru/family"])
    assert (report.groups, report.thumbnails_made) == (1, 2 * 3)
    pages = [p.relative_to(root / "gallery").as_posix() for p in all_pages(root / "gallery")]
    assert pages == ["index.html", "pages/Peru/family.html"]
    assert (root / "gallery" / "index.html").read_text().count("not in the gallery yet") == 2


def test_force_renders_every_page_again_and_reuses_the_thumbnails(root: Path) -> None:
    make_dataset(root, GROUPS[:2], 2)
    build_gallery(Layout(root))
    report = build_gallery(Layout(root), force=True)
    assert report.thumbnails_made == 0
    assert report.groups == 2


def test_the_templates_ship_with_the_package() -> None:
    templates = resources.files("emif_daemon.dataset") / "templates"
    for name in ("base.html.j2", "overview.html.j2", "group.html.j2", "dataset_card.md.j2"):
        assert (templates / name).is_file(), name
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"emif_daemon.dataset" = \[[^\]]*"templates/\*\.j2"', pyproject)


# -- one host at a time ----------------------------------------------------------------------


def other_host(name: str = "mac-b") -> HostIdentity:
    return HostIdentity(name, "0123456789ab", 4242, 1.0)


def test_one_host_at_a_time_and_a_stale_lock_is_broken_by_the_server_clock(root: Path) -> None:
    layout = Layout(root)
    layout.ensure()
    clock = ServerClock(layout.clock, "test")
    mine = gallery_lock(layout, clock, HostIdentity.current("mac-a"), stale_s=30)
    theirs = gallery_lock(layout, clock, other_host(), stale_s=30)
    assert theirs.acquire()
    assert not mine.acquire()
    assert mine.holder() is not None
    assert mine.holder()["host"] == "mac-b"  # type: ignore[index]
    old = clock.now() - 31  # their last heartbeat, 31 s ago by the file server's clock
    os.utime(theirs.path, (old, old))
    with structlog.testing.capture_logs() as logs:
        assert mine.acquire()
    assert [e["owner"] for e in logs if e["event"] == "lock_broken"] == ["mac-b"]
    theirs.beat_s = 0
    theirs.heartbeat()  # the paused owner finds it taken and stops
    assert not theirs.held
    assert mine.owns()
    mine.release()
    assert not theirs.path.exists()


def test_a_lock_whose_process_is_gone_on_this_machine_is_broken_at_once(root: Path) -> None:
    layout = Layout(root)
    layout.ensure()
    clock = ServerClock(layout.clock, "test")
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = HostIdentity("mac-a", machine_tag(), gone.pid, process_start(os.getpid()))
    assert gallery_lock(layout, clock, dead, stale_s=3600).acquire()
    assert gallery_lock(layout, clock, HostIdentity.current("mac-a"), stale_s=3600).acquire()


def test_emif_gallery_waits_for_another_host_then_names_it(root: Path) -> None:
    make_dataset(root, GROUPS[:1], 1)
    cfg = write_config(root.parent / "c.toml", fast_sections(root))
    layout = Layout(root)
    layout.ensure()
    lock = gallery_lock(layout, ServerClock(layout.clock, "t"), other_host("studio-mac"), 30)
    assert lock.acquire()
    result = run_emif("gallery", "--wait", "0.5", "--config", str(cfg))
    assert result.returncode == 1
    assert "studio-mac" in result.stderr
    lock.release()
    assert run_emif("gallery", "--config", str(cfg)).returncode == 0


def test_gallery_and_export_refuse_a_root_whose_share_is_not_mounted(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", fast_sections(tmp_path / "share"))
    for command in ("gallery", "export"):
        result = run_emif(command, "--config", str(cfg))
        assert result.returncode == 2
        assert "is the share mounted?" in result.stderr
    assert not (tmp_path / "share").exists()


def test_a_build_whose_lock_was_taken_over_stops(root: Path) -> None:
    """A host paused past the lock's staleness finds it broken and stops building."""
    make_dataset(root, GROUPS, 2)
    layout = Layout(root)
    clock = ServerClock(layout.clock, "t")
    mine = gallery_lock(layout, clock, HostIdentity.current("mac-a"), stale_s=30)
    assert mine.acquire()
    mine.beat_s = 0
    mine.path.unlink()  # broken by another host meanwhile, and taken
    assert gallery_lock(layout, clock, other_host(), stale_s=30).acquire()
    report = build_gallery(layout, should_stop=lambda: not mine.held, beat=mine.heartbeat)
    assert report.interrupted
    assert report.thumbnails_made <= 3


def test_two_builds_at_once_make_each_thumbnail_once(root: Path) -> None:
    """Two hosts run `emif gallery` together: one builds, the other waits and finds it done."""
    make_dataset(root, GROUPS, 20, size=128)
    cfg = write_config(root.parent / "c.toml", fast_sections(root))
    procs = [
        subprocess.Popen(
            emif_cmd("gallery", "--config", str(cfg)), cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    made = [int(re.search(r"(\d+) thumbnail", out).group(1)) for out in outputs]  # type: ignore[union-attr]
    assert sum(made) == 3 * 20 * 3
    assert not (root / ".emif" / "gallery.lock").exists()


# -- the daemon's refresher ------------------------------------------------------------------


def refresher_for(root: Path, build: Any, **timing: float) -> GalleryRefresher:
    layout = Layout(root)
    layout.ensure()
    options = {"settle_s": 0.0, "min_interval_s": 0.0, "retry_s": 0.1, **timing}
    return GalleryRefresher(
        layout,
        ServerClock(layout.clock, "t"),
        HostIdentity.current("mac-a"),
        stale_s=30,
        build=build,
        **options,
    )


def test_the_event_sink_returns_at_once_while_a_build_runs(root: Path) -> None:
    started, release = threading.Event(), threading.Event()
    builds: list[list[str]] = []

    def slow_build(_layout: Layout, **kw: Any) -> BuildReport:
        builds.append(kw["groups"])
        started.set()
        release.wait(10)
        return BuildReport()

    refresher = refresher_for(root, slow_build)
    refresher.start()
    try:
        refresher("item_done", {"stage": "upscale", "item": "Italy/family/Italy_family_1_1.png"})
        assert started.wait(10)
        began = time.monotonic()
        for i in range(200):
            refresher(
                "item_done", {"stage": "generate", "item": f"Japan/working/Japan_working_{i}"}
            )
        assert time.monotonic() - began < 0.1
    finally:
        release.set()
        refresher.close()
    assert builds[0] == ["Italy/family"]
    assert {g for b in builds[1:] for g in b} == {"Japan/working"}


def test_a_finished_batch_and_later_items_refresh_their_groups_under_the_lock(root: Path) -> None:
    layout = Layout(root)
    layout.ensure()
    jobs = tuple(
        JobPlan(f"jobs[{i}]", n, c, 1, 2, "p", "", 1, {}, 1)
        for i, (n, c) in enumerate([("Peru", "family"), ("Chad", "working")])
    )
    plan = Plan("nations.json", "0" * 64, jobs)
    (layout.jobs / "nations.plan.json").write_text(json.dumps(plan.to_json()))
    builds: list[list[str]] = []

    def build(_layout: Layout, **kw: Any) -> BuildReport:
        holder = json.loads((layout.state / "gallery.lock").read_text())
        assert holder["host"] == "mac-a"
        builds.append(kw["groups"])
        return BuildReport()

    busy = gallery_lock(layout, ServerClock(layout.clock, "other"), other_host(), 30)
    assert busy.acquire()
    refresher = refresher_for(root, build)
    refresher.start()
    try:
        with structlog.testing.capture_logs() as logs:
            refresher("item_claimed", {"stage": "upscale", "item": "Laos/family/x.png"})
            refresher("batch_done", {"file": "nations.json", "done": 4, "failed": 0})
            refresher("item_done", {"stage": "segment", "item": "Fiji/family/F_1_1_upscaled_1.png"})
            wait_for(lambda: any(e["event"] == "gallery_busy" for e in logs))
        assert builds == []  # another host holds the lock: nothing is built meanwhile
        busy.release()
        wait_for(lambda: builds)
    finally:
        refresher.close()
    assert builds[0] == ["Chad/working", "Fiji/family", "Peru/family"]
    assert not (layout.state / "gallery.lock").exists()


def daemon_config(root: Path, url: str, **gallery: Any) -> Path:
    sections = fast_sections(root, server={"url": url}, gallery=gallery)
    return write_config(root.parent / f"{root.name}.toml", sections, EXTRA)


def test_the_daemon_refreshes_the_pages_its_finished_work_touched(
    tmp_path: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    """While it runs, the daemon builds the page its first images touched; at a stop, its last
    build brings in what came since (the upscales). Turned off, it writes no gallery."""
    doc = {"jobs": [{"nation": "Chad", "category": "family", "prompt": "a market", "count": 2}]}
    for name, enabled in (("on", True), ("off", False)):
        root = tmp_path / name
        init_root(Layout(root), "test")
        cfg = daemon_config(root, sdapi.url, enabled=enabled)
        page = root / "gallery" / "pages" / "Chad" / "family.html"
        proc = spawn(emif_cmd("run", "--config", str(cfg)), stderr_to=tmp_path / f"{name}.log")
        try:
            (root / "queue" / "chad.json").write_text(json.dumps(doc))
            upscales = root / "UPSCALED_IMAGES" / "Chad" / "family"
            wait_for(lambda: len(list(upscales.glob("*.png"))) == 2, timeout=60)  # noqa: B023
            if enabled:
                wait_for(page.exists, timeout=30)
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        if not enabled:
            assert not (root / "gallery").exists()
            continue
        text = parse_page(page).text
        for n in (1, 2):
            path = root / "GENERATIONS" / "Chad" / "family" / f"Chad_family_{n}_1.json"
            sidecar = json.loads(path.read_text())
            assert sidecar["prompt"] in text[f"Chad_family_{n}_1"]
            assert str(sidecar["seed"]) in text[f"Chad_family_{n}_1"]
            assert "not upscaled yet" not in text[f"Chad_family_{n}_1"]
        assert [e for e in log_lines(root) if e["event"] == "gallery_refreshed"]
        assert not (root / ".emif" / "gallery.lock").exists()
