"""The Mac-like FUSE layer (tests/maclike.py) does what the macOS SMB client does: NFD listings,
lookups that ignore case and normal form, no native no-replace rename, cached listings."""

from __future__ import annotations

import ctypes
import errno
import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.maclike import MacLikeMount, is_mounted

NFC_NAME = "Côte d'Ivoire"
NFD_NAME = unicodedata.normalize("NFD", NFC_NAME)
CACHE_S = 1.5

_LIBC = ctypes.CDLL(None, use_errno=True)


@pytest.fixture(scope="module")
def layer(fuse_ok: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MacLikeMount]:
    top = tmp_path_factory.mktemp("maclike")
    (top / "share").mkdir()
    with MacLikeMount(top / "share", top / "mnt", dir_cache_s=CACHE_S) as mount:
        yield mount


@pytest.fixture
def both(layer: MacLikeMount, request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """(a folder as the Mac sees it, the same folder on the server), fresh for each test."""
    name = request.node.name
    os.mkdir(layer.mountpoint / name)
    return layer.mountpoint / name, layer.source / name


def test_listings_come_back_decomposed_while_the_server_keeps_what_was_sent(
    both: tuple[Path, Path],
) -> None:
    mac, server = both
    (mac / NFC_NAME).mkdir()
    (mac / NFC_NAME / "x.png").write_bytes(b"png")
    assert os.listdir(server) == [NFC_NAME]
    listed = os.listdir(mac)
    assert listed == [NFD_NAME]
    assert listed != [NFC_NAME]
    # the listed (NFD) name and the typed (NFC) name both open the one folder
    assert (mac / NFD_NAME / "x.png").read_bytes() == b"png"
    assert (mac / NFC_NAME / "x.png").read_bytes() == b"png"
    # a file created under the NFD name lands under the NFC one, as the client sends NFC
    (mac / NFD_NAME / f"{NFD_NAME}.txt").write_text("t")
    assert sorted(os.listdir(server / NFC_NAME)) == sorted(["x.png", f"{NFC_NAME}.txt"])


def test_lookups_ignore_case_and_a_case_twin_cannot_be_created(both: tuple[Path, Path]) -> None:
    mac, server = both
    (mac / "Italy" / "family").mkdir(parents=True)
    (mac / "Italy" / "family" / "a.png").write_bytes(b"a")
    assert (mac / "italy" / "FAMILY" / "A.png").read_bytes() == b"a"
    with pytest.raises(FileExistsError):
        (mac / "italy").mkdir()
    with pytest.raises(FileExistsError):
        os.open(mac / "ITALY" / "family" / "a.PNG", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    (mac / "italy" / "family" / "b.png").write_bytes(b"b")  # goes into Italy/family
    assert os.listdir(server) == ["Italy"]
    assert sorted(os.listdir(server / "Italy" / "family")) == ["a.png", "b.png"]


def test_no_native_no_replace_rename_and_a_rename_replaces_what_it_finds(
    both: tuple[Path, Path],
) -> None:
    mac, server = both
    (mac / "src").write_text("new")
    (mac / "dst").write_text("old")
    rc = _LIBC.renameat2(-100, bytes(mac / "src"), -100, bytes(mac / "new"), 1)
    assert rc == -1
    assert ctypes.get_errno() in (errno.EINVAL, errno.ENOTSUP, errno.ENOSYS)
    os.rename(mac / "src", mac / "DST")  # the same name up to case: replaced, like smbfs
    assert sorted(os.listdir(server)) == ["DST"]
    assert (server / "DST").read_text() == "new"
    with pytest.raises(OSError) as exc:
        os.link(mac / "DST", mac / "link")
    assert exc.value.errno in (errno.ENOTSUP, errno.EPERM)


def test_listings_are_cached_until_a_local_change_or_the_cache_period(
    both: tuple[Path, Path],
) -> None:
    mac, server = both
    (mac / "mine").write_text("m")
    assert os.listdir(mac) == ["mine"]
    (server / "theirs").write_text("t")  # written by another client of the server
    assert os.listdir(mac) == ["mine"], "a listing was not served from the cache"
    assert (mac / "theirs").read_text() == "t", "a lookup by name must reach the server"
    wait_for(lambda: sorted(os.listdir(mac)) == ["mine", "theirs"], timeout=CACHE_S + 5)
    (server / "later").write_text("l")
    (mac / "local").write_text("l")  # a change through this mount drops the cached listing
    assert sorted(os.listdir(mac)) == ["later", "local", "mine", "theirs"]


def test_two_mounts_are_two_clients_with_their_own_caches(
    layer: MacLikeMount, tmp_path: Path
) -> None:
    folder = "two-mounts"
    (layer.mountpoint / folder).mkdir()
    assert os.listdir(layer.mountpoint / folder) == []
    with MacLikeMount(layer.source, tmp_path / "other", dir_cache_s=CACHE_S) as other:
        (other.mountpoint / folder / "from-other").write_text("o")
        assert os.listdir(other.mountpoint / folder) == ["from-other"]
        assert os.listdir(layer.mountpoint / folder) == [], "the first mount's cache was dropped"
        wait_for(lambda: os.listdir(layer.mountpoint / folder) == ["from-other"], timeout=10)


def test_stopping_unmounts_and_leaves_a_plain_empty_folder(fuse_ok: None, tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "file").write_text("f")
    mount = MacLikeMount(tmp_path / "share", tmp_path / "Volumes" / "share").start()
    assert os.listdir(mount.mountpoint) == ["file"]
    mount.stop()
    assert not is_mounted(mount.mountpoint)
    assert mount.mountpoint.is_dir()
    assert os.listdir(mount.mountpoint) == []
