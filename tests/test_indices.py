"""New prompts make new images: a file's indices continue after every index planned or
present for its nation/category, safely across hosts (docs/architecture.md#the-data-path)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from emif_daemon.config.schema import parse_config
from emif_daemon.daemon.wiring import make_kit
from emif_daemon.intake.allocation import Reservations
from emif_daemon.intake.batches import cancel_batch
from emif_daemon.intake.inbox import Inbox
from emif_daemon.intake.planning import Expansion
from emif_daemon.intake.plans import read_plans
from emif_daemon.servers.sdapi import Server
from emif_daemon.share.layout import Layout
from emif_daemon.stages.generate import GenerateStage
from tests.helpers import REPO, fast_sections


def inbox(root: Path) -> Inbox:
    return Inbox(Layout(root), Expansion("{prompt}", "", {}), lambda _e, _d: None)


def drop(root: Path, name: str, doc: Any) -> Path:
    path = root / "queue" / name
    path.write_text(json.dumps(doc))
    return path


def legacy(prompt: str) -> list[dict[str, str]]:
    return [{"language": "Italy", "prompt_addition": prompt}]


def planned(root: Path) -> list[tuple[str, str]]:
    return [(p.source, i.key) for p in read_plans(Layout(root)) for i in p.items()]


def test_a_second_file_for_a_folder_continues_after_the_first(root: Path) -> None:
    box = inbox(root)
    first = {
        "defaults": {"count": 2},
        "jobs": [{"nation": "Italy", "category": "working", "prompt": "a mechanic"}],
    }
    box.take(drop(root, "first.json", first))
    box.take(drop(root, "second.json", legacy("a working italian man in a workshop")))
    assert sorted(planned(root)) == [
        ("first.json", "Italy/working/Italy_working_1"),
        ("first.json", "Italy/working/Italy_working_2"),
        ("second.json", "Italy/working/Italy_working_3"),
    ]
    [second] = [b for b in box.batches() if b.name == "second.json"]
    assert [i.prompt for i in second.plan.items()] == ["a working italian man in a workshop"]


def test_indices_continue_after_images_already_on_disk(root: Path) -> None:
    folder = root / "GENERATIONS" / "Italy" / "working"
    folder.mkdir(parents=True)
    (folder / "Italy_working_7_1.png").write_bytes(b"a user's image")
    inbox(root).take(drop(root, "a.json", legacy("a working man")))
    assert planned(root) == [("a.json", "Italy/working/Italy_working_8")]


def test_a_start_index_over_existing_images_is_refused_naming_them(root: Path) -> None:
    box = inbox(root)
    box.take(drop(root, "a.json", legacy("a working man at the docks")))
    folder = root / "GENERATIONS" / "Italy" / "working"
    folder.mkdir(parents=True)
    (folder / "Italy_working_1_1.png").write_bytes(b"made")
    again = {
        "jobs": [{"nation": "Italy", "category": "working", "prompt": "other", "start_index": 1}]
    }
    with capture_logs() as logs:
        box.take(drop(root, "b.json", again))
    report = json.loads((root / "queue" / "rejected" / "b.error.json").read_text())
    assert report["problems"] == [
        "jobs[0].start_index: indices 1…1 of Italy/working would reuse the names of existing "
        "images (Italy_working_1_1.png, made from the prompt 'a working man at the docks'); "
        "leave start_index out to continue after 1"
    ]
    assert [e["event"] for e in logs] == ["prompts_rejected"]


def test_the_very_same_file_dropped_again_is_recognised_and_reported(root: Path) -> None:
    box = inbox(root)
    doc = legacy("a working italian man in a workshop")
    box.take(drop(root, "w.json", doc))
    with capture_logs() as logs:
        box.take(drop(root, "w-again.json", doc))
    assert len(planned(root)) == 1
    [event] = [e for e in logs if e["event"] == "prompts_rejected"]
    assert "the very same file was accepted before as w.json" in event["errors"][0]
    assert (root / "queue" / "rejected" / "w-again.json").exists()


def test_two_hosts_accepting_two_files_at_once_never_share_a_name(root: Path) -> None:
    """20 times: two processes accept two files for the same nation/category together."""
    layout = Layout(root)
    for n in range(20):
        go = root / f"go-{n}"
        for host in ("a", "b"):
            drop(root, f"{host}{n}.json", legacy(f"a working man, try {n} on {host}"))
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.intake_race",
                    str(root),
                    host,
                    f"{host}{n}.json",
                    str(go),
                ],
                cwd=REPO,
            )
            for host in ("a", "b")
        ]
        go.touch()
        assert [p.wait(60) for p in procs] == [0, 0]
    keys = Counter(key for _source, key in planned(root))
    assert len(keys) == 40
    assert set(keys.values()) == {1}
    assert sorted(int(k.rsplit("_", 1)[1]) for k in keys) == list(range(1, 41))
    assert not (layout.state / "intake.lock").exists()


def test_hosts_that_know_nothing_of_each_other_never_share_an_index(root: Path) -> None:
    """10 trials: three processes plan a file each for Italy/working at the same moment,
    without the intake lock and seeing no plan, no image and no hint (listings as stale as
    they get): all start at index 1, and the file server's exclusive creates alone give each
    its own indices."""
    layout = Layout(root)
    hosts = ("a", "b", "c")
    for n in range(10):
        go = root / f"go-{n}"
        for host in hosts:
            drop(root, f"{host}{n}.json", legacy(f"a working man, try {n} on {host}"))
        race = [sys.executable, "-m", "tests.intake_race", str(root)]
        procs = [
            subprocess.Popen([*race, host, f"{host}{n}.json", str(go), "blind"], cwd=REPO)
            for host in hosts
        ]
        go.touch()
        assert [p.wait(60) for p in procs] == [0, 0, 0]
    keys = Counter(key for _source, key in planned(root))
    assert len(read_plans(layout)) == 30
    assert set(keys.values()) == {1}, [k for k, n in keys.items() if n > 1]
    assert len(keys) == 30


def test_queue_hygiene_any_case_json_and_strays_said_once(root: Path) -> None:

    cfg = parse_config(fast_sections(root), base_dir=root)
    kit = make_kit(cfg)
    stage = GenerateStage(
        kit.ctx, cfg.generate, Server("http://127.0.0.1:9", connect_timeout=1, read_timeout=1)
    )
    drop(root, "My Prompts.JSON", legacy("a working man"))
    (root / "queue" / "prompts.txt").write_text("one prompt a line")
    (root / "queue" / "cut.json").write_text('{"jobs": [{"nation": "It')  # mid-copy
    with capture_logs() as logs:
        stage.maintain()
        stage.maintain()
    assert (root / "queue" / "accepted" / "My Prompts.JSON").exists()
    assert [b.name for b in stage.inbox.batches()] == ["My Prompts.JSON"]
    assert [e["file"] for e in logs if e["event"] == "queue_file_ignored"] == ["prompts.txt"]
    report = json.loads((root / "queue" / "rejected" / "cut.error.json").read_text())
    assert report["problems"][-1] == "$: still being written when it was read? drop it again"
    found = stage.discover()
    assert found.open_count() == 1


def test_a_file_accepted_while_the_lock_was_busy_is_work_still_coming(root: Path) -> None:
    """Two workers of one host: one accepted a file while the other held the intake lock.
    Until it is planned, rounds must not look idle, or --once would exit before it."""

    busy = True

    def lock() -> contextlib.AbstractContextManager[bool]:
        return contextlib.nullcontext(not busy)

    box = Inbox(Layout(root), Expansion("{prompt}", "", {}), lambda _e, _d: None, lock=lock)
    box.take(drop(root, "a.json", legacy("a working man")))
    assert box.batches() == []
    assert box.unplanned() == 1
    busy = False
    box.plan_waiting()
    assert box.unplanned() == 0
    assert [b.name for b in box.batches()] == ["a.json"]


def test_a_reservation_moves_past_indices_a_stale_hint_missed(root: Path) -> None:
    """Another host reserved 1…3 where this one has listed nothing (and the `next` hint is
    gone): the server refuses those creates, and this file gets 4…6."""
    layout = Layout(root)
    other = Reservations(layout)
    assert other.run("Norway", "family", 1, 3) == 1
    other.keep()
    (layout.indices / "norway" / "family" / "next").unlink()
    mine = Reservations(layout)
    assert mine.run("Norway", "family", 1, 3) == 4
    assert mine.refused == 3
    assert mine.exact("norway", "FAMILY", 2, 1) == [2]  # one sequence for every spelling


def test_a_refused_file_leaves_no_reservation_behind(root: Path) -> None:
    box = inbox(root)
    box.take(drop(root, "a.json", legacy("a working man at the docks")))
    again = {"jobs": [{"nation": "Italy", "category": "working", "prompt": "x", "count": 2},
                      {"nation": "Italy", "category": "working", "prompt": "y",
                       "start_index": 1}]}  # fmt: skip
    box.take(drop(root, "b.json", again))
    assert (root / "queue" / "rejected" / "b.json").exists()
    markers = sorted(p.name for p in (root / ".emif" / "indices").rglob("*") if p.name.isdigit())
    assert markers == ["0", "1"]  # a.json's index 1 (in folder 0), nothing of b.json's
    box.take(drop(root, "c.json", legacy("a working man at a forge")))
    assert planned(root)[-1] == ("c.json", "Italy/working/Italy_working_2")


def test_a_name_a_cancelled_batch_had_gets_a_name_of_its_own(root: Path) -> None:
    box = inbox(root)
    box.take(drop(root, "x.json", legacy("a working man")))
    cancel_batch(Layout(root), "x.json", host="test")
    box.take(drop(root, "x.json", legacy("a working woman")))
    assert sorted(planned(root)) == [
        ("x-2.json", "Italy/working/Italy_working_2"),
        ("x.json", "Italy/working/Italy_working_1"),
    ]
