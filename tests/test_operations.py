"""Unattended operation: launchd, status, report, progress, logs."""

from __future__ import annotations

import json
import os
import plistlib
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from emif_daemon.macos import launchd
from emif_daemon.observe.metrics import COLUMNS
from tests import sdapi_server
from tests.helpers import (
    REPO,
    emif_cmd,
    fast_sections,
    log_lines,
    run_emif,
    serving,
    write_config,
)


def small_config(root: Path, url: str, **over: dict[str, Any]) -> Path:
    sections = fast_sections(root, server={"url": url}, **over)
    extra = "[generate.payload]\nwidth = 128\nheight = 128\n[upscale]\nenabled = false\n"
    return write_config(root.parent / "c.toml", sections, extra)


# -- launchd ------------------------------------------------------------------------------


def test_rendered_plist_has_every_key_and_runs_the_installed_emif(root: Path) -> None:
    cfg = write_config(root.parent / "c.toml", fast_sections(root))
    result = run_emif("launchd", "print", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    plist = plistlib.loads(result.stdout.encode())
    assert plist["Label"] == "com.emif.daemon"
    program = plist["ProgramArguments"]
    assert Path(program[0]).is_absolute()
    assert Path(program[0]).name == "emif"
    assert Path(program[0]).exists()
    assert program[1:3] == ["run", "--config"]
    assert program[3] == str(cfg.resolve())
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] >= 10
    assert plist["ExitTimeOut"] > 10  # the daemon exits within 10 s of SIGTERM
    assert plist["ProcessType"] == "Interactive"
    assert plist["WorkingDirectory"] == str(cfg.resolve().parent)
    # launchd opens these at login, maybe before the share is mounted: never on the share.
    logs = str(Path.home() / "Library" / "Logs" / "emif-daemon")
    assert plist["StandardOutPath"].startswith(logs)
    assert plist["StandardErrorPath"].startswith(logs)
    assert str(root) not in result.stdout
    assert plist["EnvironmentVariables"]["PYTHONUNBUFFERED"] == "1"
    assert str(Path(sys.executable).parent) in plist["EnvironmentVariables"]["PATH"]


def test_install_and_uninstall_drive_launchctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stub launchctl that behaves like the real one: bootout takes a moment, a bootstrap
    right after it fails with 37 once, print fails once the label is gone."""
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    record = tmp_path / "launchctl.log"
    state = tmp_path / "state"
    (state / "loaded").mkdir(parents=True)  # an earlier install is loaded
    stub = stub_dir / "launchctl"
    stub.write_text(
        f'#!/bin/sh\necho "$@" >> {record}\ncd {state}\n'
        'case "$1" in\n'
        "  bootout) [ -d loaded ] && mv loaded unloading; exit 0;;\n"
        "  print) if [ -d unloading ]; then rmdir unloading; exit 0; fi;"
        " [ -d loaded ] && exit 0; exit 113;;\n"
        "  bootstrap) if [ ! -e tried ]; then touch tried;"
        ' echo "Bootstrap failed: 37: Operation already in progress" >&2; exit 37; fi;'
        " mkdir loaded; exit 0;;\n"
        "esac\nexit 0\n"
    )
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub_dir}{os.pathsep}{os.environ['PATH']}")
    home = tmp_path / "home"
    text = launchd.render(config=REPO / "config.toml", root=tmp_path / "root", home=home)
    waits: list[float] = []
    path = launchd.install(text, home=home, platform="darwin", sleep=waits.append)
    assert path == home / "Library" / "LaunchAgents" / "com.emif.daemon.plist"
    assert plistlib.loads(path.read_bytes())["Label"] == "com.emif.daemon"
    assert (home / "Library" / "Logs" / "emif-daemon").is_dir()
    uid = os.getuid()
    service = f"gui/{uid}/com.emif.daemon"
    assert record.read_text().splitlines() == [
        f"enable {service}",  # a label once disabled would fail every bootstrap
        f"bootout {service}",
        f"print {service}",  # still unloading
        f"print {service}",  # gone
        f"bootstrap gui/{uid} {path}",  # 37: too soon
        f"bootstrap gui/{uid} {path}",
    ]
    assert waits == [0.5, 2.0]
    assert launchd.uninstall(home=home, platform="darwin") == path
    assert not path.exists()
    assert record.read_text().splitlines()[-1] == f"bootout gui/{uid}/com.emif.daemon"


def test_install_off_macos_says_so_and_exits_2(root: Path) -> None:
    cfg = write_config(root.parent / "c.toml", fast_sections(root))
    for action in ("install", "uninstall"):
        result = run_emif("launchd", action, "--config", str(cfg))
        assert result.returncode == 2
        assert "only on macOS" in result.stderr


# -- status -------------------------------------------------------------------------------


def claim(root: Path, stage: str, item: str, host: str, state: str, age: float = 0) -> None:
    path = root / ".emif" / "claims" / stage / (item + ".claim")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": 1, "token": "t", "state": state}))
    if age:
        old = time.time() - age
        os.utime(path, (old, old))


def touch_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(sdapi_server.make_png(8, 8))


def test_status_counts_a_known_root(root: Path) -> None:
    gens = [f"N/c/N_c_{i}_1.png" for i in range(1, 11)]
    for rel in gens:
        touch_png(root / "GENERATIONS" / rel)
    for rel in gens[:3]:  # done upscales, with their done claims
        touch_png(root / "UPSCALED_IMAGES" / rel.replace(".png", "_upscaled_1.png"))
        claim(root, "upscale", rel, "a", "done")
    for rel in gens[3:5]:  # failed
        path = root / ".emif" / "failed" / "upscale" / (rel + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"reason": "HTTP 500"}))
    claim(root, "upscale", gens[5], "a", "working")  # fresh
    claim(root, "upscale", gens[6], "b", "working", age=3600)  # stale
    # segment: the three upscales are its inputs, one is done
    (root / "SEGMENTS" / "N" / "c" / "N_c_1_1_upscaled_1").mkdir(parents=True)
    claim(root, "segment", "N/c/N_c_2_1_upscaled_1.png", "b", "working")
    (root / "queue" / "accepted").mkdir(parents=True, exist_ok=True)
    (root / "queue" / "waiting.json").write_text("{}")
    cfg = write_config(root.parent / "c.toml", fast_sections(root))
    result = run_emif("status", "--json", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    up = status["stages"]["upscale"]
    assert (up["pending"], up["working"], up["done"], up["failed"]) == (3, 2, 3, 2)
    assert up["working_by_host"] == {"a": 1, "b": 1}
    stale = {c["host"]: c["stale"] for c in up["claims"]}
    assert stale == {"a": False, "b": True}
    ages = {c["host"]: c["age_s"] for c in up["claims"]}
    assert ages["b"] >= 3500
    seg = status["stages"]["segment"]
    assert (seg["pending"], seg["working"], seg["done"], seg["failed"]) == (1, 1, 1, 0)
    assert status["queue"] == {
        "waiting": 1,
        "accepted": 0,
        "done": 0,
        "rejected": 0,
        "cancelled": 0,
    }
    table = run_emif("status", "--config", str(cfg)).stdout
    assert "upscale" in table
    assert "STALE" in table


def test_status_of_100_items_per_stage_is_fast_enough_to_poll(root: Path) -> None:
    for i in range(300):
        touch_png(root / "GENERATIONS" / f"N{i % 3}" / "c" / f"x{i}.png")
    cfg = write_config(root.parent / "c.toml", fast_sections(root))
    result = run_emif("status", "--json", "--config", str(cfg))
    assert json.loads(result.stdout)["stages"]["upscale"]["pending"] == 300


# -- report -------------------------------------------------------------------------------


def write_metrics(root: Path, host: str, stage: str, rows: list[tuple[float, str]]) -> None:
    path = root / "metrics" / host / f"{stage}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(COLUMNS)]
    for seconds, status in rows:
        lines.append(
            f"2026-11-24T10:00:00Z,item,{seconds},{seconds / 2},50.0,100.0,8000.0,{status}"
        )
    path.write_text("\n".join(lines) + "\n")


def test_report_totals_from_hand_made_metrics(root: Path) -> None:
    write_metrics(root, "a", "generate", [(10, "done"), (20, "done"), (30, "done")])
    write_metrics(root, "b", "generate", [(40, "done"), (5, "failed")])
    write_metrics(root, "a", "upscale", [(60, "done")])
    cfg = write_config(
        root.parent / "c.toml",
        fast_sections(root, report={"watts": {"generate": 100, "upscale": 36}}),
    )
    result = run_emif("report", "--json", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    gen = report["stages"]["generate"]
    assert gen["images"] == 4
    assert gen["failed"] == 1
    assert gen["seconds_total"] == 100
    assert gen["seconds_mean"] == 25
    assert gen["seconds_median"] == 25
    assert gen["seconds_p95"] == pytest.approx(38.5)
    assert gen["server_seconds_total"] == 50
    assert gen["energy_wh"] == pytest.approx(100 * 100 / 3600, abs=1e-3)
    assert gen["hosts"]["a"]["images"] == 3
    assert gen["hosts"]["b"]["seconds_mean"] == 40
    assert report["stages"]["upscale"]["energy_wh"] == pytest.approx(0.6)
    assert report["energy_wh_total"] == pytest.approx(2.778 + 0.6, abs=1e-3)
    table = run_emif("report", "--config", str(cfg)).stdout
    assert "generate" in table
    assert "estimated energy: 3.38 Wh" in table


# -- progress -----------------------------------------------------------------------------


def prompts(root: Path, count: int) -> None:
    (root / "queue").mkdir(exist_ok=True)
    (root / "queue" / "p.json").write_text(
        json.dumps({"jobs": [{"nation": "N", "category": "c", "prompt": "p", "count": count}]})
    )


def test_progress_bars_on_a_terminal(root: Path) -> None:
    with serving(latency=0.3) as server:
        cfg = small_config(root, server.url)
        prompts(root, 4)
        leader, follower = pty.openpty()
        proc = subprocess.Popen(
            emif_cmd("run", "--once", "--config", str(cfg)),
            cwd=REPO,
            stdin=follower,
            stdout=follower,
            stderr=follower,
        )
        os.close(follower)
        out = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(30) == 0
        os.close(leader)
    text = out.decode(errors="replace")
    assert "generate" in text
    assert "4/4" in text
    assert "img/s" in text or "s/img" in text
    # Log lines print above the bars: one short line per finished image, the start-up line
    # saying where to drop files, and none of the claim and request chatter.
    done = re.findall(r"\d\d:\d\d:\d\d generate +done GENERATIONS/N/c/N_c_\d_1\.png", text)
    assert len(done) == 4, text
    assert f"drop prompts files into {root / 'queue'}" in text
    assert "item_claimed" not in text
    assert "request_sent" not in text


def test_progress_events_when_not_on_a_terminal(root: Path) -> None:
    with serving(latency=0.3) as server:
        cfg = small_config(root, server.url, logging={"progress_s": 0.3})
        prompts(root, 5)
        result = run_emif("run", "--once", "--config", str(cfg))
        assert result.returncode == 0
    events = [e for e in log_lines(root) if e["event"] == "progress"]
    assert events
    assert {"done", "pending", "failed", "per_minute", "eta_s", "stage"} <= set(events[0])
    assert "\r" not in result.stderr


# -- logs ---------------------------------------------------------------------------------


def test_logs_command_filters_and_prints_readable_lines(root: Path) -> None:
    with serving() as server:
        cfg = small_config(root, server.url)
        prompts(root, 2)
        assert run_emif("run", "--once", "--config", str(cfg)).returncode == 0
    out = run_emif("logs", "--stage", "generate", "-n", "0", "--config", str(cfg)).stdout
    lines = out.splitlines()
    assert sum("item_done" in line for line in lines) == 2
    assert not any(line.startswith("{") for line in lines)
    assert all("stage=generate" in line for line in lines)
    only = run_emif("logs", "--item", "N_c_2", "-n", "0", "--config", str(cfg)).stdout
    assert "N_c_2" in only
    assert "N_c_1 " not in only
    errors = run_emif("logs", "--level", "error", "-n", "0", "--config", str(cfg)).stdout
    assert errors.strip() == ""
