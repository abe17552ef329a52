"""The root and its marker: never a tree on the local disk where a share should be
(docs/protocol.md#the-root)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from emif_daemon.macos.launchd import network_volume_problems
from emif_daemon.share.layout import Layout
from emif_daemon.share.root_marker import read_marker, root_problem
from tests.helpers import emif_cmd, fast_sections, run_emif, spawn, wait_for, write_config


def config_for(root: Path, tmp_path: Path) -> Path:
    sections = fast_sections(root, generate={"enabled": True}, upscale={"enabled": False})
    sections["server"] = {"url": "http://127.0.0.1:9"}  # never asked: no prompts file
    return write_config(tmp_path / "c.toml", sections)


def events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_init_creates_the_tree_and_a_marker_once(tmp_path: Path) -> None:
    root = tmp_path / "share" / "pipeline"
    cfg = config_for(root, tmp_path)
    first = run_emif("init", "--config", str(cfg))
    assert first.returncode == 0, first.stderr
    assert "initialised" in first.stdout
    marker = read_marker(Layout(root))
    assert marker is not None
    for folder in ("queue/accepted", "GENERATIONS", ".emif/claims/generate"):
        assert (root / folder).is_dir()
    again = run_emif("init", "--config", str(cfg))
    assert again.returncode == 0
    assert "is a root already" in again.stdout
    assert read_marker(Layout(root)) == marker


def test_once_on_a_missing_share_builds_nothing_and_exits_2(tmp_path: Path) -> None:
    mount_point = tmp_path / "Volumes" / "share"
    mount_point.mkdir(parents=True)  # a leftover mount point: an empty local folder
    root = mount_point / "pipeline"
    result = run_emif("run", "--once", "--config", str(config_for(root, tmp_path)))
    assert result.returncode == 2
    said = [e for e in events_of(result.stderr) if e["event"] == "share_unavailable"]
    assert len(said) == 1
    assert "is the share mounted?" in said[0]["reason"]
    assert list(mount_point.iterdir()) == []


def events_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_share_missing_at_start_and_dropped_mid_run_is_waited_for(tmp_path: Path) -> None:
    """Missing at start: no tree, share_unavailable once, the daemon waits; mounted: it
    starts. Dropped mid-run (the marker gone): share_unavailable once, nothing written
    there; back: share_back, work resumes by itself."""
    root = tmp_path / "share" / "pipeline"
    root.mkdir(parents=True)
    cfg = config_for(root, tmp_path)
    err = tmp_path / "daemon.stderr"
    proc = spawn(emif_cmd("run", "--config", str(cfg)), stderr_to=err)
    try:
        wait_for(lambda: any(e["event"] == "share_unavailable" for e in events(err)), 30)
        assert list(root.iterdir()) == []  # nothing built where the share should be
        assert run_emif("init", "--config", str(cfg)).returncode == 0  # "mounted"
        wait_for(lambda: any(e["event"] == "daemon_started" for e in events(err)), 30)
        log = root / "logs"
        wait_for(lambda: any(e["event"] == "first_scan" for e in logs_in(log)), 30)
        marker = Layout(root).marker
        saved = marker.read_bytes()
        marker.unlink()  # the share dropped: what the daemon sees is a root without marker
        wait_for(lambda: count(logs_in(log), "share_unavailable") == 1, 30)
        marker.write_bytes(saved)
        wait_for(lambda: count(logs_in(log), "share_back") == 1, 30)
        (root / "queue" / "late.json").write_text("not json")  # work resumes: intake
        wait_for((root / "queue" / "rejected" / "late.error.json").exists, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    watched = ("share_unavailable", "share_back", "daemon_started")
    assert [e["event"] for e in events(err) if e["event"] in watched] == [
        "share_unavailable",
        "share_back",
        "daemon_started",
        "share_unavailable",
        "share_back",
    ]
    assert count(logs_in(root / "logs"), "share_unavailable") == 1


def logs_in(folder: Path) -> list[dict[str, Any]]:
    return [e for path in sorted(folder.glob("*.jsonl")) for e in events(path)]


def count(evts: list[dict[str, Any]], name: str) -> int:
    return sum(1 for e in evts if e["event"] == name)


def test_operation_not_permitted_names_the_interpreter_to_grant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under launchd, macOS refuses a network volume with EPERM and asks no one: the
    message names the binary that needs the grant and where to give it."""
    layout = Layout(tmp_path / "share")
    real_stat = os.stat

    def refused(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).startswith(str(layout.root)):
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", refused)
    problem = root_problem(layout) or ""
    assert "Operation not permitted" in problem
    assert os.path.realpath(sys.executable) in problem
    assert "Privacy & Security → Files and Folders → Network Volumes" in problem


def test_launchd_refuses_what_it_would_need_from_a_share_at_login(tmp_path: Path) -> None:

    root = tmp_path / "share" / "pipeline"
    problems = network_volume_problems(
        {
            "the config file": root / "config.toml",
            "emif": Path("/Volumes/share/venv/bin/emif"),
            "the segment checkpoint": tmp_path / "models" / "sam.pth",
        },
        root,
    )
    assert len(problems) == 2
    assert problems[0].startswith(f"the config file {root / 'config.toml'} is on a network")
    assert problems[1].startswith("emif /Volumes/share/venv/bin/emif is on a network volume")
