"""TreeScanner and Settler through their seams: a fake share (stat/scandir) and a fake clock.

No sleeps: races on the share are staged by hooks that run between the scanner's calls.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from emif_daemon.errors import ShareUnavailable
from emif_daemon.share.watch import Settler, TreeScanner

TOP = Path("/share")


class FakeEntry:
    """What os.scandir yields, for a folder, a regular file or anything else ("fifo")."""

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self.kind == "dir"

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return self.kind == "file"


@dataclass
class FakeDir:
    mtime_ns: int = 1
    files: dict[str, str] = field(default_factory=dict)  # name -> kind
    dirs: dict[str, FakeDir] = field(default_factory=dict)


class FakeShare:
    """An in-memory tree under TOP behind TreeScanner's `stat` and `scandir` seams.

    Counts the calls, fails the ones named in `fail` ((call, rel) -> errno; call is "stat",
    "scandir" or "iterate" for an error after the first entry) and runs the hook named in
    `then` once, right after that call, to stage a race.
    """

    def __init__(self) -> None:
        self.root = FakeDir()
        self.stats: list[str] = []
        self.listed: list[str] = []
        self.fail: dict[tuple[str, str], int] = {}
        self.then: dict[tuple[str, str], Callable[[], None]] = {}

    # -- changing the tree (as another host would) --

    def mkdir(self, rel: str) -> None:
        node = self.root
        for part in rel.split("/"):
            if part not in node.dirs:
                node.dirs[part] = FakeDir()
                node.mtime_ns += 1
            node = node.dirs[part]

    def touch(self, rel: str, *, bump: bool = True, kind: str = "file") -> None:
        """Add a file; `bump=False` is a file landing within the folder's current mtime tick."""
        parent, _, name = rel.rpartition("/")
        if parent:
            self.mkdir(parent)
        node = self._node(parent)
        node.files[name] = kind
        if bump:
            node.mtime_ns += 1

    def rmtree(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        node = self._node(parent)
        del node.dirs[name]
        node.mtime_ns += 1

    # -- the seams --

    def stat(self, path: Any) -> os.stat_result:
        rel = self._rel(path)
        self.stats.append(rel)
        self._maybe_fail("stat", rel)
        node = self._node(rel)
        self._after("stat", rel)
        return os.stat_result((0o40755, 0, 0, 2, 0, 0, 0, 0, 0, 0), {"st_mtime_ns": node.mtime_ns})

    def scandir(self, path: Any) -> contextlib.AbstractContextManager[Iterator[FakeEntry]]:
        rel = self._rel(path)
        self._maybe_fail("scandir", rel)
        node = self._node(rel)
        self.listed.append(rel)
        entries = [FakeEntry(name, "dir") for name in node.dirs]
        entries += [FakeEntry(name, kind) for name, kind in node.files.items()]
        return self._listing(rel, entries)

    @contextlib.contextmanager
    def _listing(self, rel: str, entries: list[FakeEntry]) -> Iterator[Iterator[FakeEntry]]:
        yield self._iterate(rel, entries)
        self._after("scandir", rel)

    def _iterate(self, rel: str, entries: list[FakeEntry]) -> Iterator[FakeEntry]:
        for i, entry in enumerate(entries):
            if i == 1:
                self._maybe_fail("iterate", rel)
            yield entry

    def _maybe_fail(self, call: str, rel: str) -> None:
        code = self.fail.get((call, rel))
        if code is not None:
            raise OSError(code, os.strerror(code), str(TOP / rel))

    def _after(self, call: str, rel: str) -> None:
        hook = self.then.pop((call, rel), None)
        if hook is not None:
            hook()

    def _rel(self, path: Any) -> str:
        p = Path(path)
        return "" if p == TOP else p.relative_to(TOP).as_posix()

    def _node(self, rel: str) -> FakeDir:
        node = self.root
        for part in rel.split("/") if rel else []:
            if part not in node.dirs:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", rel)
            node = node.dirs[part]
        return node

    def calls(self) -> tuple[list[str], list[str]]:
        """(stat, listed) since the last call, sorted."""
        stats, listed = sorted(self.stats), sorted(self.listed)
        self.stats, self.listed = [], []
        return stats, listed


def scanner_on(share: FakeShare, **kwargs: Any) -> TreeScanner:
    return TreeScanner(
        TOP, want=lambda n: n.endswith(".png"), scandir=share.scandir, stat=share.stat, **kwargs
    )


def settled(scanner: TreeScanner, share: FakeShare) -> set[str]:
    """Scan until no folder is due for its second listing, then forget the calls."""
    found = scanner.scan()
    found = scanner.scan()
    share.calls()
    return found


# -- cheap rescans and the same-tick re-list --


def test_a_quiet_tree_costs_one_stat_per_folder_and_no_listing() -> None:
    share = FakeShare()
    share.touch("a/1.png")
    share.touch("b/c/2.png")
    scanner = scanner_on(share)

    assert scanner.scan() == {"a/1.png", "b/c/2.png"}
    assert scanner.version == 1
    folders = ["", "a", "b", "b/c"]
    assert share.calls() == (folders, folders)

    # New folders are listed once more on the next scan (a file may share their mtime tick).
    assert scanner.scan() == {"a/1.png", "b/c/2.png"}
    assert share.calls() == (folders, folders)

    for _ in range(3):
        assert scanner.scan() == {"a/1.png", "b/c/2.png"}
        assert share.calls() == (folders, [])
    assert scanner.version == 1


def test_a_file_landing_in_the_same_mtime_tick_is_found_on_the_next_scan() -> None:
    share = FakeShare()
    share.touch("a/1.png")
    share.touch("b/2.png")
    scanner = scanner_on(share)
    settled(scanner, share)

    share.touch("a/new.png")  # bumps a's mtime
    assert scanner.scan() == {"a/1.png", "a/new.png", "b/2.png"}
    assert share.calls()[1] == ["a"]  # only the changed folder is listed
    version = scanner.version

    share.touch("a/late.png", bump=False)  # after that listing, within the same mtime tick
    assert scanner.scan() == {"a/1.png", "a/new.png", "a/late.png", "b/2.png"}
    assert share.calls()[1] == ["a"]  # the one re-listing after a change
    assert scanner.version == version + 1

    # The listing changed without its mtime: a change like any other, re-listed once more.
    assert scanner.scan() == {"a/1.png", "a/new.png", "a/late.png", "b/2.png"}
    assert share.calls()[1] == ["a"]
    assert scanner.scan() == {"a/1.png", "a/new.png", "a/late.png", "b/2.png"}
    assert share.calls()[1] == []  # mtime unchanged and already re-listed: not listed again
    assert scanner.version == version + 1


def test_a_same_tick_file_after_the_re_listing_waits_for_the_next_change() -> None:
    """The policy's limit, pinned: two listings per change, not more."""
    share = FakeShare()
    share.touch("a/1.png")
    scanner = scanner_on(share)
    settled(scanner, share)

    share.touch("a/2.png")
    scanner.scan()
    scanner.scan()
    share.touch("a/3.png", bump=False)
    assert "a/3.png" not in scanner.scan()

    share.touch("a/4.png")
    assert scanner.scan() == {"a/1.png", "a/2.png", "a/3.png", "a/4.png"}


def test_folders_not_descended_into_are_neither_stated_nor_listed() -> None:
    share = FakeShare()
    share.touch("a/1.png")
    share.touch("b/c/2.png")
    scanner = scanner_on(share, report_dirs=True)

    assert scanner.scan(descend=lambda rel: rel != "b") == {"a", "a/1.png", "b"}
    assert share.calls() == (["", "a"], ["", "a"])


# -- races and faults on the share --


@pytest.mark.parametrize(
    "vanishes_after",
    [("scandir", ""), ("stat", "a")],
    ids=["between-parent-listing-and-stat", "between-stat-and-listing"],
)
def test_a_folder_vanishing_mid_walk_is_left_out(vanishes_after: tuple[str, str]) -> None:
    share = FakeShare()
    share.touch("a/1.png")
    share.touch("a/2.png")
    share.touch("b/3.png")
    scanner = scanner_on(share)
    settled(scanner, share)
    version = scanner.version

    share.touch("new.png")  # top and a changed, so both are listed on the next scan
    share.touch("a/more.png")
    share.then[vanishes_after] = lambda: share.rmtree("a")

    assert scanner.scan() == {"b/3.png", "new.png"}
    assert scanner.version == version + 1
    assert scanner.unreadable == {}

    assert scanner.scan() == {"b/3.png", "new.png"}  # top re-listed: a is gone for good
    assert scanner.version == version + 1


def test_a_folder_removed_mid_walk_on_a_real_tree(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "a").mkdir(parents=True)
    (top / "b").mkdir()
    (top / "a" / "1.png").write_bytes(b"")
    (top / "b" / "2.png").write_bytes(b"")

    def scandir(path: Any) -> Any:
        listing = os.scandir(path)
        if Path(path) != top:
            return listing
        with listing:
            entries = list(listing)
        shutil.rmtree(top / "a")  # after the parent was listed, before a is stated
        return contextlib.nullcontext(iter(entries))

    scanner = TreeScanner(top, want=lambda n: n.endswith(".png"), scandir=scandir)
    assert scanner.scan() == {"b/2.png"}
    assert scanner.unreadable == {}


UNREADABLE_CASES = [
    pytest.param("stat", errno.EACCES, id="stat-EACCES"),
    pytest.param("scandir", errno.EACCES, id="scandir-EACCES"),
    pytest.param("iterate", errno.EIO, id="iterate-EIO"),
    pytest.param("stat", errno.EIO, id="stat-EIO"),
    pytest.param("scandir", errno.ESTALE, id="scandir-ESTALE"),
]


@pytest.mark.parametrize(("call", "code"), UNREADABLE_CASES)
@pytest.mark.parametrize(
    ("folder", "kept"),
    [
        ("a", {"b/4.png", "top.png"}),
        ("a/deep", {"a/1.png", "a/2.png", "b/4.png", "top.png"}),
    ],
)
def test_an_unreadable_sub_folder_is_skipped_and_reported_once(
    call: str, code: int, folder: str, kept: set[str]
) -> None:
    share = FakeShare()
    for rel in ["top.png", "a/1.png", "a/2.png", "a/deep/3.png", "b/4.png"]:
        share.touch(rel)
    reports: list[tuple[Path, int | None, dict[str, str]]] = []

    def on_unreadable(path: Path, exc: OSError) -> None:
        reports.append((path, exc.errno, dict(scanner.unreadable)))

    scanner = scanner_on(share, on_unreadable=on_unreadable)
    everything = settled(scanner, share)
    version = scanner.version

    share.fail[(call, folder)] = code
    share.touch(f"{folder}/new.png")  # so that it is listed again, not served from the cache

    assert scanner.scan() == kept  # its previous contents are dropped too
    assert scanner.version == version + 1
    assert list(scanner.unreadable) == [folder]
    assert os.strerror(code) in scanner.unreadable[folder]
    assert reports == [(TOP / folder, code, scanner.unreadable)]

    for _ in range(3):
        assert scanner.scan() == kept
    assert scanner.version == version + 1
    assert len(reports) == 1  # once, not on every rescan

    del share.fail[(call, folder)]
    assert scanner.scan() == everything | {f"{folder}/new.png"}
    assert scanner.unreadable == {}
    assert len(reports) == 1

    share.fail[(call, folder)] = code
    share.touch(f"{folder}/newer.png")
    assert scanner.scan() == kept
    assert len(reports) == 2  # a new outage is reported again


def test_an_unreadable_folder_that_vanishes_is_no_longer_reported() -> None:
    share = FakeShare()
    share.touch("a/1.png")
    share.touch("b/2.png")
    scanner = scanner_on(share)
    share.fail[("scandir", "a")] = errno.EACCES
    assert scanner.scan() == {"b/2.png"}
    assert list(scanner.unreadable) == ["a"]

    share.rmtree("a")
    assert scanner.scan() == {"b/2.png"}
    assert scanner.unreadable == {}


def test_a_missing_top_is_an_empty_tree(tmp_path: Path) -> None:
    top = tmp_path / "top"
    scanner = TreeScanner(top, want=lambda n: n.endswith(".png"))
    assert scanner.scan() == set()
    assert scanner.version == 0

    (top / "a").mkdir(parents=True)
    (top / "a" / "1.png").write_bytes(b"")
    assert scanner.scan() == {"a/1.png"}
    assert scanner.version == 1

    shutil.rmtree(top)
    assert scanner.scan() == set()
    assert scanner.version == 2


@pytest.mark.parametrize(
    ("call", "code"),
    [
        ("stat", errno.EIO),
        ("stat", errno.EACCES),
        ("scandir", errno.EACCES),
        ("iterate", errno.EIO),
    ],
)
def test_an_unreadable_top_raises_share_unavailable(call: str, code: int) -> None:
    share = FakeShare()
    share.touch("1.png")
    share.touch("2.png")
    scanner = scanner_on(share)
    assert scanner.scan() == {"1.png", "2.png"}

    share.fail[(call, "")] = code
    share.touch("3.png")
    with pytest.raises(ShareUnavailable) as raised:
        scanner.scan()
    assert raised.value.errno == code
    assert str(TOP) in str(raised.value)
    assert scanner.unreadable == {}

    del share.fail[(call, "")]
    assert scanner.scan() == {"1.png", "2.png", "3.png"}


# -- the real file system --


def test_a_1000_levels_deep_tree_is_scanned_without_recursion(tmp_path: Path) -> None:
    top = tmp_path / "top"
    parts = ["d"] * 1000
    bottom = tmp_path
    for part in ["top", *parts]:  # not mkdir(parents=True): it recurses
        bottom /= part
        bottom.mkdir()
    (bottom / "x.png").write_bytes(b"")
    (top / "y.png").write_bytes(b"")
    try:
        scanner = TreeScanner(top, want=lambda n: n.endswith(".png"))
        expected = {"/".join([*parts, "x.png"]), "y.png"}
        assert scanner.scan() == expected
        assert scanner.scan() == expected
        assert scanner.version == 1
    finally:  # shutil.rmtree recurses too; remove bottom-up
        (bottom / "x.png").unlink()
        for depth in range(len(parts), 0, -1):
            top.joinpath(*parts[:depth]).rmdir()


def test_only_regular_files_are_reported_and_symlinks_are_not_followed(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "sub").mkdir(parents=True)
    (top / "sub" / "inner.png").write_bytes(b"")
    (top / "real.png").write_bytes(b"")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "outside.png").write_bytes(b"")
    os.mkfifo(top / "x.png")
    (top / "y.png").symlink_to(tmp_path / "missing.png")  # dangling
    (top / "z.png").symlink_to(top / "real.png")
    (top / "linked").symlink_to(elsewhere, target_is_directory=True)

    scanner = TreeScanner(top, want=lambda n: n.endswith(".png"))
    assert scanner.scan() == {"real.png", "sub/inner.png"}
    assert scanner.unreadable == {}


def test_fake_entries_that_are_not_regular_files_are_not_reported() -> None:
    share = FakeShare()
    share.touch("a.png")
    share.touch("fifo.png", kind="fifo")
    share.touch("link.png", kind="symlink")
    assert scanner_on(share).scan() == {"a.png"}


# -- Settler on a fake clock --


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


T = 1_000_000  # the file server's clock, in seconds


def put(path: Path, data: bytes, mtime_s: float) -> None:
    path.write_bytes(data)
    ns = int(mtime_s * 1e9)
    os.utime(path, ns=(ns, ns))


def test_settler_waits_until_size_and_mtime_hold_for_settle_s(tmp_path: Path) -> None:
    clock = FakeClock()
    settler = Settler(10.0, monotonic=clock)
    path = tmp_path / "a.png"

    put(path, b"x", T)
    assert not settler.ready(path, server_now=T + 1)
    clock.now += 9
    put(path, b"xx", T)  # size changed
    assert not settler.ready(path, server_now=T + 1)
    clock.now += 9
    put(path, b"xy", T + 1)  # same size, mtime changed
    assert not settler.ready(path, server_now=T + 2)
    clock.now += 9.9
    assert not settler.ready(path, server_now=T + 2)
    clock.now += 0.1  # settle_s of stability on our clock, though the server's stood still
    assert settler.ready(path, server_now=T + 2)


def test_settler_trusts_an_mtime_older_than_settle_s_by_the_servers_clock(
    tmp_path: Path,
) -> None:
    settler = Settler(10.0, monotonic=FakeClock())
    path = tmp_path / "a.png"
    put(path, b"x", T)
    assert not settler.ready(path, server_now=T + 9.5)
    assert settler.ready(path, server_now=T + 10)


def test_settler_trusts_a_file_that_arrived_by_rename(tmp_path: Path) -> None:
    settler = Settler(10.0, monotonic=FakeClock())
    path = tmp_path / "a.png"
    put(path, b"x", T)
    settler.arrived(str(path))
    assert settler.ready(path, server_now=T)
    assert not settler.ready(tmp_path / "missing.png", server_now=T + 100)


def test_settler_with_settle_s_zero_is_ready_at_once(tmp_path: Path) -> None:
    clock = FakeClock()
    settler = Settler(0, monotonic=clock)
    path = tmp_path / "a.png"
    put(path, b"x", T)
    assert settler.ready(path, server_now=T - 5)  # even with the server's clock behind
    put(path, b"xy", T + 1)
    assert settler.ready(path, server_now=T - 5)


def test_settler_forget_drops_what_it_remembered(tmp_path: Path) -> None:
    clock = FakeClock()
    settler = Settler(10.0, monotonic=clock)
    kept, dropped, arrived = (tmp_path / n for n in ("kept.png", "dropped.png", "arrived.png"))
    for path in (kept, dropped, arrived):
        put(path, b"x", T)
        assert not settler.ready(path, server_now=T)
    settler.arrived(str(arrived))

    settler.forget(tmp_path, keep=[str(kept)])
    settler.forget(tmp_path / "other", keep=[])  # other folders' state is not touched
    clock.now += 10
    assert settler.ready(kept, server_now=T)
    assert not settler.ready(dropped, server_now=T)  # its watch starts over
    assert not settler.ready(arrived, server_now=T)  # its rename hint is gone too
    clock.now += 10
    assert settler.ready(dropped, server_now=T)


def test_a_changed_folder_is_re_listed_for_the_whole_listing_cache_period() -> None:
    """A Mac's SMB client may serve a listing from its cache for up to a minute: a file
    another Mac wrote can appear in our listing that long after the folder's mtime moved."""
    share = FakeShare()
    share.touch("a/1.png")
    clock = [0.0]
    scanner = scanner_on(share)
    scanner.relist_s = 60.0
    scanner.monotonic = lambda: clock[0]
    settled(scanner, share)
    clock[0] = 100.0  # after the window: one last listing, then the tree is at rest
    scanner.scan()
    assert share.calls()[1] == ["", "a"]
    scanner.scan()
    assert share.calls()[1] == []
    share.touch("a/2.png")
    scanner.scan()
    assert share.calls()[1] == ["a"]
    listed = []
    for second in range(105, 300, 5):
        clock[0] = float(second)
        found = scanner.scan()
        if share.calls()[1]:
            listed.append(second)
        if second == 145:  # shows up in a listing, the folder's mtime unchanged
            share.touch("a/hidden-by-cache.png", bump=False)
        if second == 150:
            assert "a/hidden-by-cache.png" in found
    # Every scan for 60 s after the last change seen (the one at 150), one more after that
    # window (a listing just before it closed may have come from the cache), then none.
    assert listed == list(range(105, 215, 5))


def test_names_are_reported_in_nfc_and_opened_as_they_are_on_disk() -> None:

    share = FakeShare()
    decomposed = unicodedata.normalize("NFD", "Côte d'Ivoire/family/Côte_1_1.png")
    share.touch(decomposed)
    scanner = scanner_on(share)
    composed = unicodedata.normalize("NFC", decomposed)
    assert scanner.scan() == {composed}
    assert scanner.actual(composed) == decomposed
    assert scanner.actual("plain.png") == "plain.png"
