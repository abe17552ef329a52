"""A damaged plan never stops the generate stage or another batch, and is said once with its
path and what to do; its copy restores it under the same names (docs/protocol.md#prompts-files).

One test per kind of damage: garbage, empty, another JSON type, wrong field types, a
parseable but meaningless value, 300 MB.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from emif_daemon.config.schema import load_config
from emif_daemon.intake.inbox import Inbox
from emif_daemon.intake.planning import Expansion
from emif_daemon.intake.plans import copy_path, plan_path, read_plan
from emif_daemon.share.layout import Layout
from tests import sdapi_server
from tests.helpers import log_lines, pipeline_config, pngs, run_emif


def _wrong_types(path: Path) -> None:
    doc = json.loads(path.read_text())
    doc["jobs"][0]["first"] = "1"
    doc["jobs"][0]["payload"] = []
    path.write_text(json.dumps(doc))


def _meaningless(path: Path) -> None:
    doc = json.loads(path.read_text())
    doc["jobs"][0]["count"] = 0
    doc["jobs"][0]["first"] = -7
    path.write_text(json.dumps(doc))


def _huge(path: Path) -> None:
    with open(path, "wb") as fh:  # 300 MB, sparse: what a read would have to swallow
        fh.truncate(300 * 2**20)


DAMAGE: dict[str, Callable[[Path], Any]] = {
    "garbage": lambda p: p.write_bytes(b"\x00\xff{{ not a plan"),
    "empty": lambda p: p.write_bytes(b""),
    "wrong JSON type": lambda p: p.write_text("[1, 2]"),
    "wrong field types": _wrong_types,
    "parseable but meaningless": _meaningless,
    "300 MB": _huge,
}


def batch(nation: str, count: int = 2) -> dict[str, Any]:
    return {
        "jobs": [{"nation": nation, "category": "family", "prompt": "a family", "count": count}]
    }


def accepted_root(root: Path, url: str) -> tuple[Layout, Path]:
    """Two files accepted and planned, nothing made yet."""
    cfg = pipeline_config(root, url, upscale=False)
    layout = Layout(root)
    box = Inbox(layout, Expansion.of(load_config(cfg).generate), lambda _e, _d: None)
    for name, nation in (("a.json", "Peru"), ("b.json", "Chile")):
        (layout.queue / name).write_text(json.dumps(batch(nation)))
        box.take(layout.queue / name)
    return layout, cfg


def events(root: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in log_lines(root) if e.get("event") == name]


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_plan_is_restored_from_its_copy_under_the_same_names(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer, kind: str
) -> None:
    layout, cfg = accepted_root(root, sdapi.url)
    before = read_plan(layout, "a.json")
    DAMAGE[kind](plan_path(layout, "a.json"))
    done = run_emif("run", "--once", "--no-progress", "--config", str(cfg), timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_plan(layout, "a.json") == before
    assert pngs(root / "GENERATIONS") == [
        "Chile/family/Chile_family_1_1.png",
        "Chile/family/Chile_family_2_1.png",
        "Peru/family/Peru_family_1_1.png",  # the names planned before the damage
        "Peru/family/Peru_family_2_1.png",
    ]
    [restored] = events(root, "plan_restored")
    assert restored["plan"] == str(plan_path(layout, "a.json"))
    assert events(root, "stage_error") == []
    assert sorted(e["file"] for e in events(root, "batch_done")) == ["a.json", "b.json"]


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_plan_damaged_with_its_copy_is_said_once_and_blocks_nothing(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer, kind: str
) -> None:
    """Both files damaged: the names are unknown, so the batch waits, said once with the
    path and what to do; rounds go on, and the other batch is made."""
    layout, cfg = accepted_root(root, sdapi.url)
    for path in (plan_path(layout, "a.json"), copy_path(plan_path(layout, "a.json"))):
        DAMAGE[kind](path)
    box = Inbox(layout, Expansion.of(load_config(cfg).generate), lambda _e, _d: None)
    with capture_logs() as logs:
        for _ in range(3):
            box.step()
            assert [b.name for b in box.batches()] == ["b.json"]
    [said] = [e for e in logs if e["event"] == "plan_damaged"]
    assert said["plan"] == str(plan_path(layout, "a.json"))
    assert "restore both files" in said["hint"]
    assert "emif cancel" in said["hint"]
    assert box.waiting() == 0  # not taken for a file still to plan: never planned again
    assert (layout.accepted / "a.json").exists()  # left for a person, never rejected


def test_a_daemon_with_a_damaged_plan_makes_the_other_batches(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    """`[1, 2]` in place of an accepted batch's plan and its copy stopped the generate stage
    (523 stage_error in a minute); now the other batch is made and the damage said once."""
    layout, cfg = accepted_root(root, sdapi.url)
    for path in (plan_path(layout, "a.json"), copy_path(plan_path(layout, "a.json"))):
        path.write_text("[1, 2]")
    done = run_emif("run", "--once", "--no-progress", "--config", str(cfg), timeout=90)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert pngs(root / "GENERATIONS") == [
        "Chile/family/Chile_family_1_1.png",
        "Chile/family/Chile_family_2_1.png",
    ]
    assert len(events(root, "plan_damaged")) == 1
    assert events(root, "stage_error") == []


def test_a_finished_batchs_damaged_plan_does_not_stop_intake(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    layout, cfg = accepted_root(root, sdapi.url)
    assert run_emif("run", "--once", "--no-progress", "--config", str(cfg)).returncode == 0
    for path in (plan_path(layout, "a.json"), copy_path(plan_path(layout, "a.json"))):
        path.write_text('{"version": 2, "jobs": "none"}')
    (layout.queue / "c.json").write_text(json.dumps(batch("Peru", 1)))
    done = run_emif("run", "--once", "--no-progress", "--config", str(cfg), timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Peru/family/Peru_family_3_1.png" in pngs(root / "GENERATIONS")
    assert (layout.done / "c.json").exists()
