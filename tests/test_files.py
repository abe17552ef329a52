"""Atomic publishing and the sweep of dead writers' temp files (docs/protocol.md#publishing)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from emif_daemon.macos.power import SleepGuard
from emif_daemon.png import png_problem
from emif_daemon.share.atomic import (
    MACHINE,
    building_dir,
    parse_temp_name,
    publish_dir,
    publish_new,
    temp_name,
    write_temp,
)
from emif_daemon.share.layout import Layout
from emif_daemon.share.sweep import _remove_tree, clean_orphans, finish_sidecar
from tests.helpers import wait_for
from tests.sdapi_server import make_png


def test_publish_new_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    publish_new(target, b"first")
    with pytest.raises(FileExistsError):
        publish_new(target, b"second")
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temp left behind


def test_folder_is_published_whole(tmp_path: Path) -> None:
    final = tmp_path / "stem"
    with building_dir(final) as tmp:
        (tmp / "a.png").write_bytes(b"x")
        assert not final.exists()
        publish_dir(tmp, final)
    assert [p.name for p in final.iterdir()] == ["a.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["stem"]


def test_sweep_removes_dead_writers_temp_files_and_folders_only(tmp_path: Path) -> None:
    dead = tmp_path / f".x.png.{MACHINE}.999999.abcd1234.emiftmp"
    dead.write_bytes(b"half")
    dead_dir = tmp_path / "SEGMENTS" / f".stem.{MACHINE}.999999.abcd1234.emiftmp"
    dead_dir.mkdir(parents=True)
    (dead_dir / "a_seg_001.png").write_bytes(b"x")
    alive = temp_name(tmp_path / "y.png")
    alive.write_bytes(b"being written")
    other_fresh = tmp_path / ".z.png.otherhost.12.abcd1234.emiftmp"
    other_fresh.write_bytes(b"maybe alive")
    other_old = tmp_path / ".w.png.otherhost.12.abcd1234.emiftmp"
    other_old.write_bytes(b"abandoned")
    old = time.time() - 7 * 3600
    os.utime(other_old, (old, old))
    keep = tmp_path / "final.png"
    keep.write_bytes(b"done")
    removed = clean_orphans(
        [tmp_path],
        machine=MACHINE,
        server_now=time.time(),
        max_age_s=6 * 3600,
        alive=lambda pid: pid == os.getpid(),
    )
    assert sorted(removed) == sorted([dead, dead_dir, other_old])
    assert alive.exists()
    assert other_fresh.exists()
    assert keep.exists()
    assert parse_temp_name(alive.name) == (MACHINE, os.getpid())


def test_png_checks_catch_truncation_and_size() -> None:
    png = make_png(16, 8)
    assert png_problem(png) is None
    assert png_problem(png, (16, 8)) is None
    assert "expected 8×8" in (png_problem(png, (8, 8)) or "")
    assert "truncated" in (png_problem(png[:-20]) or "")
    assert "not a PNG" in (png_problem(b"GIF89a" + png[6:]) or "")


def test_sleep_guard_holds_caffeinate_only_while_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "caffeinate.log"
    stub = tmp_path / "caffeinate"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {record}\nexec sleep 30\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    guard = SleepGuard(enabled=True, platform="darwin")
    guard.busy(True)
    guard.busy(True)  # one assertion, not one per item
    proc = guard._proc
    assert proc is not None
    wait_for(record.exists, timeout=10)
    guard.busy(False)
    assert proc.poll() is not None
    assert record.read_text().splitlines() == [f"-i -w {os.getpid()}"]
    assert not SleepGuard(enabled=True, platform="linux").enabled


def test_the_sweep_walks_a_tree_of_any_depth_without_recursion(tmp_path: Path) -> None:
    deep = tmp_path
    for _ in range(1100):
        deep = deep / "d"
        deep.mkdir()
    dead = deep / f".x.png.{MACHINE}.999999.abcd1234.emiftmp"
    dead.write_bytes(b"half")
    removed = clean_orphans(
        [tmp_path],
        machine=MACHINE,
        server_now=time.time(),
        max_age_s=60,
        alive=lambda _pid: False,
    )
    assert removed == [dead]
    _remove_tree(tmp_path / "d")  # pytest's own clean-up recurses
    assert not (tmp_path / "d").exists()


def test_the_daemons_sweep_looks_only_where_temp_files_can_be(tmp_path: Path) -> None:

    layout = Layout(tmp_path)
    layout.ensure()
    name = f".x.png.{MACHINE}.999999.abcd1234.emiftmp"
    where = {
        "sidecar": layout.generations / "Italy" / "family" / name,
        "cut-out folder": layout.segments / "Italy" / "family" / name,
        "plan": layout.jobs / name,
        "inside a published cut-out folder": layout.segments / "Italy" / "family" / "s" / name,
        "claims": layout.claims / "generate" / name,
    }
    for path in where.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    removed = clean_orphans(
        [layout.root],
        machine=MACHINE,
        server_now=time.time(),
        max_age_s=60,
        alive=lambda _pid: False,
        descend=layout.may_hold_temp_files,
    )
    assert sorted(removed) == sorted([where["sidecar"], where["cut-out folder"], where["plan"]])


def test_a_sidecar_left_under_its_temp_name_by_a_killed_writer_is_put_in_place(
    tmp_path: Path,
) -> None:
    """Killed between publishing an image and its sidecar: the sidecar was whole and synced
    under its temp name before the image appeared, so the sweep completes the publish."""

    image = tmp_path / "N_c_1_1.png"
    image.write_bytes(b"png")
    sidecar = tmp_path / "N_c_1_1.json"
    tmp = write_temp(sidecar, b'{"seed": 1}')
    lone = write_temp(tmp_path / "N_c_2_1.json", b'{"seed": 2}')  # its image never appeared
    removed = clean_orphans(
        [tmp_path],
        machine=MACHINE,
        server_now=time.time(),
        max_age_s=60,
        alive=lambda _pid: False,
        finish=finish_sidecar,
    )
    assert sidecar.read_bytes() == b'{"seed": 1}'
    assert not tmp.exists()
    assert removed == [lone]
    assert not lone.exists()
