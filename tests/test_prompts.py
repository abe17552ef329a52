"""Prompts files: parsing, every validation rule, deterministic expansion. Pure."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emif_daemon.intake.plans import PlannedItem, expand
from emif_daemon.intake.prompts import Parsed, parse
from emif_daemon.share.layout import name_problem


def parsed(doc: Any) -> Parsed:
    return parse(json.dumps(doc).encode())


def items_of(
    doc: Any, payload: dict[str, Any] | None = None, sha: str = "f" * 64
) -> list[PlannedItem]:
    p = parsed(doc)
    assert p.problems == []
    plan = expand(
        p, file_sha=sha, template="{prompt}, photo", negative_default="", base_payload=payload or {}
    )
    return list(plan.items())


def test_native_shape_expands_with_names_seeds_and_template() -> None:
    items = items_of(
        {
            "defaults": {"count": 2, "seed": 1000, "negative_prompt": "blurry"},
            "jobs": [
                {"nation": "Italy", "category": "family", "prompt": "a family"},
                {"nation": "Italy", "category": "working", "prompt": "a mechanic", "count": 1},
            ],
        }
    )
    assert [i.output_names() for i in items] == [
        ["Italy/family/Italy_family_1_1.png"],
        ["Italy/family/Italy_family_2_1.png"],
        ["Italy/working/Italy_working_1_1.png"],
    ]
    assert [i.seed for i in items] == [1000, 1001, 1000]
    assert items[0].prompt == "a family, photo"
    assert items[0].negative_prompt == "blurry"


def test_indices_continue_across_entries_of_one_folder() -> None:
    items = items_of(
        {
            "jobs": [
                {"nation": "Italy", "category": "family", "prompt": "a", "count": 10},
                {"nation": "Italy", "category": "working", "prompt": "b", "count": 3},
                {"nation": "Italy", "category": "family", "prompt": "c", "count": 10},
            ]
        }
    )
    family = [i.index for i in items if i.category == "family"]
    assert family == list(range(1, 21))
    names = [n for i in items for n in i.output_names()]
    assert len(names) == len(set(names)) == 23


def test_start_index_and_overlap() -> None:
    items = items_of(
        {"jobs": [{"nation": "N", "category": "c", "prompt": "p", "count": 2, "start_index": 50}]}
    )
    assert [i.index for i in items] == [50, 51]
    p = parsed(
        {
            "jobs": [
                {"nation": "N", "category": "c", "prompt": "p", "count": 10},
                {"nation": "N", "category": "c", "prompt": "q", "count": 2, "start_index": 5},
            ]
        }
    )
    assert p.problems == [
        "jobs[1].start_index: indices 5…6 of N/c overlap jobs[0] (1…10); "
        "two images would share a name"
    ]


def test_batch_size_gives_k_images_per_item() -> None:
    items = items_of(
        {"jobs": [{"nation": "N", "category": "c", "prompt": "p", "count": 2}]},
        payload={"batch_size": 2},
    )
    assert items[1].output_names() == ["N/c/N_c_2_1.png", "N/c/N_c_2_2.png"]


def test_legacy_shape_takes_category_from_prompt_addition() -> None:
    items = items_of(
        [
            {"language": "Italy", "prompt_addition": "a working italian man in a workshop"},
            {"language": "Italy", "prompt_addition": "an italian Family at dinner"},
            {"language": "Japan", "prompt_addition": "a working japanese woman", "count": 2},
        ]
    )
    assert [n for i in items for n in i.output_names()] == [
        "Italy/working/Italy_working_1_1.png",
        "Italy/family/Italy_family_1_1.png",
        "Japan/working/Japan_working_1_1.png",
        "Japan/working/Japan_working_2_1.png",
    ]


def test_seed_absent_is_recorded_same_on_every_host_and_differs_per_file() -> None:
    doc = {"jobs": [{"nation": "N", "category": "c", "prompt": "p", "count": 3}]}
    a = [i.seed for i in items_of(doc, sha="a" * 64)]
    assert a == [i.seed for i in items_of(doc, sha="a" * 64)]
    assert a != [i.seed for i in items_of(doc, sha="b" * 64)]
    assert len(set(a)) == 3
    assert all(0 <= s < 2**32 for s in a)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "$: the file is empty"),
        (b'{"jobs": [', "$: not valid JSON"),
        (b'"text"', "$: expected an object with `jobs` or a list, got a string"),
        (b'{"jobs": []}', "jobs: required, a non-empty list"),
        (
            b'{"jobs": [{"nation": "../x", "category": "c", "prompt": "p"}]}',
            "jobs[0].nation: contains '/'",
        ),
        (
            b'{"jobs": [{"nation": "..", "category": "c", "prompt": "p"}]}',
            "jobs[0].nation: must not be '..'",
        ),
        (
            b'{"jobs": [{"nation": ".hidden", "category": "c", "prompt": "p"}]}',
            "jobs[0].nation: must not start with '.'",
        ),
        (
            b'{"jobs": [{"nation": "a\\\\b", "category": "c", "prompt": "p"}]}',
            "jobs[0].nation: contains '\\\\'",
        ),
        (
            b'{"jobs": [{"nation": "a\\u0007", "category": "c", "prompt": "p"}]}',
            "jobs[0].nation: contains a control character",
        ),
        (
            b'{"jobs": [{"nation": "N", "category": "", "prompt": "p"}]}',
            "jobs[0].category: must not be empty",
        ),
        (
            b'{"jobs": [{"nation": "N", "category": "c", "prompt": "p", "count": -1}]}',
            "jobs[0].count: expected an integer 1…10000, got -1",
        ),
        (
            b'{"jobs": [{"nation": "N", "category": "c", "prompt": "p", "count": 10001}]}',
            "jobs[0].count",
        ),
        (
            b'{"jobs": [{"nation": "N", "category": "c", "prompt": "p", "count": true}]}',
            "jobs[0].count",
        ),
        (
            b'{"jobs": [{"nation": "N", "category": "c", "prompt": "p", "seed": 4294967296}]}',
            "jobs[0].seed: expected an integer 0",
        ),
        (
            b'{"jobs": [{"nation": "N", "category": "c"}]}',
            "jobs[0].prompt: required, a non-empty string",
        ),
        (
            b'{"jobs": [{"nation": "N", "category": "c", "prompt": "p", "payload": 3}]}',
            "jobs[0].payload: expected an object",
        ),
        (
            b'{"jobs": [{"nation": "N", "category": "c", "prompt": "p", "nations": 1}]}',
            "jobs[0].nations: unknown key",
        ),
        (
            b'[{"language": "Italy", "prompt_addition": "an italian man"}]',
            "[0].prompt_addition: contains neither",
        ),
        (
            b'[{"language": "Italy", "prompt_addition": "working family"}]',
            "[0].prompt_addition: contains both",
        ),
        (b"\xff\xfe{}", "$: not UTF-8"),
    ],
)
def test_each_invalid_file_names_its_problem(data: bytes, problem: str) -> None:
    problems = parse(data).problems
    assert any(p.startswith(problem) for p in problems), problems


def test_bom_is_tolerated_and_names_are_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "Côte d'Ivoire")
    doc = {"jobs": [{"nation": decomposed, "category": "family", "prompt": "p"}]}
    p = parse(b"\xef\xbb\xbf" + json.dumps(doc, ensure_ascii=False).encode())
    assert p.problems == []
    assert p.jobs[0].nation == unicodedata.normalize("NFC", "Côte d'Ivoire")


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    p = parsed({"jobs": [{"nation": "a/b", "category": ".", "count": 0}, 7, {"nation": "N"}]})
    assert len(p.problems) >= 6


names = st.text(min_size=0, max_size=120)


@given(names)
def test_a_name_is_accepted_only_if_safe_as_one_folder(name: str) -> None:
    problem = name_problem(name)
    invisible = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}
    unsafe = (
        not name.strip()
        or len(name) > 100
        or any(c in name for c in '/\\\x00<>:"|?*')
        or any(unicodedata.category(c) in invisible for c in name)
        or any(c.isspace() and c != " " for c in name)
        or name.startswith(".")
        or name != name.strip()
        or name.endswith(".")
        or name.split(".", maxsplit=1)[0].strip().lower()
        in {"con", "prn", "aux", "nul", *(f"{d}{n}" for d in ("com", "lpt") for n in range(10))}
    )
    assert (problem is not None) == unsafe


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Italy", "Japan", "Perú"]),
            st.sampled_from(["family", "working"]),
            st.integers(1, 30),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_expansion_names_are_unique_and_counts_add_up(jobs: list[tuple[str, str, int]]) -> None:
    doc = {"jobs": [{"nation": n, "category": c, "prompt": "p", "count": k} for n, c, k in jobs]}
    items = items_of(doc)
    names = [n for i in items for n in i.output_names()]
    assert len(names) == len(set(names)) == sum(k for _, _, k in jobs)
    for item in items:
        assert name_problem(item.nation) is None
        assert (
            item.key == f"{item.nation}/{item.category}/{item.nation}_{item.category}_{item.index}"
        )
