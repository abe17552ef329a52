"""Hostile prompts files and names: every one refused at validation with a clear problem,
bounded in what it may cost, and never able to stop the stage."""

from __future__ import annotations

import hashlib
import json
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from emif_daemon.cli.main import main as emif
from emif_daemon.config.schema import parse_config
from emif_daemon.errors import ConfigError, NotARegularFile
from emif_daemon.intake import queue_files
from emif_daemon.intake.inbox import Inbox
from emif_daemon.intake.planning import Expansion, existing_spelling_problems
from emif_daemon.intake.plans import expand
from emif_daemon.intake.prompts import Limits, parse
from emif_daemon.share.atomic import read_regular, rename_noreplace
from emif_daemon.share.layout import Layout
from emif_daemon.share.names import MAX_NAME_BYTES, longest_name_bytes, name_problem


def problems_of(doc: Any) -> list[str]:
    return parse(json.dumps(doc, ensure_ascii=False).encode()).problems


def job(nation: str = "Italy", category: str = "family", **extra: Any) -> dict[str, Any]:
    return {"nation": nation, "category": category, "prompt": "p", **extra}


def test_a_deeply_nested_file_is_refused_and_validate_does_not_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for depth in (40, 100_000):
        data = b'{"jobs": [{"nation": "N", "category": "c", "prompt": "p", "payload": '
        data += b'{"a": ' * depth + b"1" + b"}" * depth + b"}]}"
        assert any("nested" in p for p in parse(data).problems), depth
        path = tmp_path / f"deep-{depth}.json"
        path.write_bytes(data)
        assert emif(["validate", str(path)]) == 1
        assert "nested" in capsys.readouterr().out


def test_a_lone_surrogate_is_refused() -> None:
    data = b'{"jobs": [{"nation": "\\ud800", "category": "c", "prompt": "p"}]}'
    problems = parse(data).problems
    assert any("surrogate" in p for p in problems), problems


def test_duplicate_keys_are_refused_instead_of_silently_taking_the_last() -> None:
    data = b'{"jobs": [{"nation": "Italy", "nation": "Peru", "category": "c", "prompt": "p"}]}'
    assert any("'nation' appears twice" in p for p in parse(data).problems)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_are_refused(constant: str) -> None:
    data = '{"jobs": [{"nation": "N", "category": "c", "prompt": "p", '
    data += f'"payload": {{"cfg_scale": {constant}}}}}]}}'
    problems = parse(data.encode()).problems
    assert problems, constant
    assert all(p.startswith("$:") for p in problems)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Ita\u200bly", "invisible"),  # zero-width space
        ("Italy\u202e", "invisible"),  # right-to-left override
        ("CON", "device name"),
        ("aux.txt", "device name"),
        ("Italy.", "ends with '.'"),
        ("Italy ", "starts or ends with a space"),
        (" Italy", "starts or ends with a space"),
        ("It\u00a0aly", "space character"),
        ("Ita:ly", "SMB shares refuse"),
        ("Ita?ly", "SMB shares refuse"),
    ],
)
def test_names_smb_would_reject_or_mangle_are_refused(name: str, why: str) -> None:
    assert why in (name_problem(name) or "")
    assert any(why in p for p in problems_of({"jobs": [job(nation=name)]}))


def test_a_name_whose_derived_file_names_pass_255_bytes_is_refused() -> None:
    long = "\u00e9" * 100  # 100 characters, 200 bytes in UTF-8
    assert name_problem(long) is None
    problems = problems_of({"jobs": [job(nation=long, category="c")]})
    assert any(f"at most {MAX_NAME_BYTES}" in p for p in problems), problems
    assert longest_name_bytes("Italy", "family", 10_000, 99) <= MAX_NAME_BYTES


def test_names_that_differ_only_in_case_are_one_folder_and_refused() -> None:
    problems = problems_of({"jobs": [job("Italy"), job("italy"), job("ITALY")]})
    assert len([p for p in problems if "differ only in case" in p]) == 2
    decomposed = "Me\u0301xico"
    assert problems_of({"jobs": [job("México"), job(decomposed)]}) == []  # one NFC name
    assert problems_of({"jobs": [job("Italy", "family"), job("Italy", "Family")]})


def test_names_that_differ_only_in_case_from_an_existing_folder_are_refused(
    tmp_path: Path,
) -> None:
    gens = tmp_path / "GENERATIONS"
    (gens / "Italy" / "family").mkdir(parents=True)
    parsed = parse(json.dumps({"jobs": [job("italy"), job("Italy", "Family")]}).encode())
    plan = expand(
        parsed, file_sha="0" * 64, template="{prompt}", negative_default="", base_payload={}
    )
    problems = existing_spelling_problems(plan, gens)
    assert problems == [
        "jobs[0].nation: 'italy' differs only in case from the existing folder "
        "GENERATIONS/Italy; write 'Italy'",
        "jobs[1].category: 'Family' differs only in case from the existing folder "
        "GENERATIONS/Italy/family; write 'family'",
    ]


def test_ten_million_items_are_refused_with_the_limit_and_how_to_raise_it() -> None:
    doc = {"jobs": [job(f"N{i}", count=10_000) for i in range(1000)]}
    problems = problems_of(doc)
    assert problems == [
        "$: 10000000 images in one file, at most 100000; split the file, or raise "
        "generate.max_items_per_file in the config"
    ]
    assert parse(json.dumps(doc).encode(), Limits(max_items=10_000_000)).problems == []


def test_a_plan_costs_memory_per_job_not_per_item() -> None:
    doc = {"jobs": [job(f"N{i}", count=100, seed=i) for i in range(1000)]}
    parsed = parse(json.dumps(doc).encode())
    assert parsed.problems == []
    tracemalloc.start()
    plan = expand(
        parsed,
        file_sha="0" * 64,
        template="{prompt}, photo" * 50,
        negative_default="",
        base_payload={},
    )
    size, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(plan) == 100_000
    assert size < 2_000_000, size  # ~1 KB a job; 100 000 items would be tens of MB
    started = time.perf_counter()
    resumed = next(plan.items(99_950))
    assert time.perf_counter() - started < 0.01  # found by bisection, not by a walk
    assert (resumed.nation, resumed.index, resumed.seed) == ("N999", 51, 999 + 50)


def test_a_prompt_over_the_limit_is_refused() -> None:
    problems = problems_of({"jobs": [job(prompt="x" * 10_001)]})
    assert problems == ["jobs[0].prompt: 10001 characters, at most 10000"]


def test_special_files_are_never_read(tmp_path: Path) -> None:
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(NotARegularFile, match="not a regular file"):
        read_regular(fifo, 1000)
    assert time.monotonic() - started < 1
    big = tmp_path / "big.json"
    big.write_bytes(b"x" * 2000)
    with pytest.raises(NotARegularFile, match="at most 1000"):
        read_regular(big, 1000)


def test_a_file_replaced_while_being_accepted_is_planned_from_what_was_accepted(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan comes from the renamed file: a writer replacing queue/a.json at the moment
    of acceptance can never leave accepted/ holding one file and the plan another's."""
    layout = Layout(root)
    layout.ensure()
    first = json.dumps({"jobs": [job("Italy")]}).encode()
    second = json.dumps({"jobs": [job("Peru", count=3)]}).encode()
    (layout.queue / "a.json").write_bytes(first)
    real = rename_noreplace

    def replaced_at_the_last_moment(src: Path, dst: Path) -> None:
        if src.parent == layout.queue:
            src.write_bytes(second)
        real(src, dst)

    monkeypatch.setattr(queue_files, "rename_noreplace", replaced_at_the_last_moment)
    box = Inbox(layout, Expansion("{prompt}", "", {}), lambda _e, _d: None)
    box.take(layout.queue / "a.json")
    accepted = (layout.accepted / "a.json").read_bytes()
    assert accepted == second
    [batch] = box.batches()
    assert batch.plan.sha256 == hashlib.sha256(accepted).hexdigest()
    assert [i.nation for i in batch.plan.items()] == ["Peru"] * 3


def test_an_invalid_file_found_in_accepted_is_rejected_not_skipped_for_ever(root: Path) -> None:
    layout = Layout(root)
    layout.ensure()
    (layout.accepted / "bad.json").write_bytes(b'{"jobs": [{"nation": "CON"}]}')
    later = Inbox(
        layout, Expansion("{prompt}", "", {}), lambda _e, _d: None, now=lambda: time.time() + 3600
    )
    assert later.batches() == []  # no plan: not a batch yet
    later.plan_waiting()  # its acceptor died long ago: any host plans it
    assert (layout.rejected / "bad.json").exists()
    report = json.loads((layout.rejected / "bad.error.json").read_text())
    assert any("device name" in p for p in report["problems"])


def test_nan_in_a_config_payload_is_a_config_error(tmp_path: Path) -> None:

    table = {"generate": {"payload": {"cfg_scale": float("nan"), "x": [1.0, float("inf")]}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(table, base_dir=tmp_path)
    assert sorted(caught.value.problems) == [
        "generate.payload.cfg_scale: nan is not a number JSON can carry; write a number",
        "generate.payload.x[1]: inf is not a number JSON can carry; write a number",
    ]
