"""config.toml → validated dataclasses; every error names its key; the CLI exits 2."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest

from emif_daemon.config.schema import Config, choices_of, load_config, parse_config
from emif_daemon.errors import ConfigError
from tests.helpers import REPO, run_emif


def problems_of(table: dict[str, Any], base: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(table, base_dir=base)
    return info.value.problems


def test_empty_config_gives_spec_defaults(tmp_path: Path) -> None:
    cfg = parse_config({}, base_dir=tmp_path)
    assert cfg.paths.root == tmp_path / "pipeline"
    assert cfg.server.url == "http://127.0.0.1:7860"
    assert cfg.server.read_timeout_s == 900
    assert cfg.server.max_attempts == 3
    assert cfg.upscale.expect_size == (2048, 2048)
    assert cfg.segment.model_type == "vit_h"
    assert cfg.segment.checkpoint == tmp_path / "models" / "sam_vit_h_4b8939.pth"
    assert cfg.watch.rescan_interval_s == 15
    assert cfg.coordination.lease_s == 120
    assert cfg.upscale_url == cfg.server.url


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"server": {"max_attempts": "3"}}, 'server.max_attempts: expected an integer, got "3"'),
        ({"server": {"url": 7860}}, "server.url: expected a string, got 7860"),
        ({"server": {"max_attempts": 0}}, "server.max_attempts: must be between 1 and 100, got 0"),
        ({"server": {"retries": 3}}, "server.retries: unknown key"),
        ({"sever": {}}, "sever: unknown key"),
        ({"segment": {"model_type": "vit_x"}}, "segment.model_type: must be one of vit_h"),
        ({"generate": {"enabled": "yes"}}, 'generate.enabled: expected true or false, got "yes"'),
        ({"upscale": {"expect_size": [2048, "x"]}}, "upscale.expect_size: expected a list"),
        ({"upscale": {"passes": {"a": 1}}}, "upscale.passes: expected [[upscale.passes]]"),
        ({"watch": 3}, "watch: expected a table [watch], got 3"),
    ],
)
def test_each_wrong_key_or_type_is_named(
    tmp_path: Path, table: dict[str, Any], message: str
) -> None:
    problems = problems_of(table, tmp_path)
    assert any(p.startswith(message) for p in problems), problems


def leaf_fields() -> list[tuple[str, str, Any, dataclasses.Field[Any]]]:
    """(section, name, type, field) of every key of every section, read from the dataclasses."""
    out = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(cls):
            continue  # `source`, not a TOML key
        hints = typing.get_type_hints(cls)
        out += [(section.name, f.name, hints[f.name], f) for f in dataclasses.fields(cls)]
    return out


LITERAL_FIELDS = [(s, n, h) for s, n, h, _ in leaf_fields() if choices_of(h)]
RANGED_FIELDS = [
    (s, n, h, f.metadata["range"]) for s, n, h, f in leaf_fields() if "range" in f.metadata
]


def test_the_constrained_fields_are_found() -> None:
    """Every key that had a choice or a range before the constraints moved onto the fields
    still has one (new keys add to these sets)."""
    keys = {f"{s}.{n}" for s, n, *_ in LITERAL_FIELDS}
    assert keys >= {
        "segment.model_type",
        "segment.device",
        "segment.cutout",
        "watch.mode",
        "logging.level",
    }
    assert {f"{s}.{n}" for s, n, *_ in RANGED_FIELDS} >= {
        "server.connect_timeout_s",
        "server.read_timeout_s",
        "server.max_attempts",
        "server.max_concurrent",
        "server.backoff_s",
        "segment.points_per_side",
        "segment.points_per_batch",
        "segment.pred_iou_thresh",
        "segment.stability_score_thresh",
        "segment.min_area_fraction",
        "segment.padding",
        "segment.recycle_after",
        "watch.rescan_interval_s",
        "watch.settle_s",
        "coordination.heartbeat_s",
        "coordination.lease_s",
        "notify.max_retries",
        "logging.progress_s",
    }


@pytest.mark.parametrize(
    ("section", "name", "hint"), LITERAL_FIELDS, ids=[f"{s}.{n}" for s, n, _ in LITERAL_FIELDS]
)
def test_every_choice_field_rejects_a_bad_value_naming_key_and_choices(
    tmp_path: Path, section: str, name: str, hint: Any
) -> None:
    key, choices = f"{section}.{name}", choices_of(hint)
    assert getattr(getattr(Config(), section), name) in choices  # the default is a choice
    assert problems_of({section: {name: "nope"}}, tmp_path) == [
        f'{key}: must be one of {", ".join(choices)}, got "nope"'
    ]
    assert problems_of({section: {name: 3}}, tmp_path) == [f"{key}: expected a string, got 3"]
    for choice in choices:
        cfg = parse_config({section: {name: choice}}, base_dir=tmp_path)
        assert getattr(getattr(cfg, section), name) == choice


@pytest.mark.parametrize(
    ("section", "name", "hint", "bounds"),
    RANGED_FIELDS,
    ids=[f"{s}.{n}" for s, n, *_ in RANGED_FIELDS],
)
def test_every_ranged_field_rejects_out_of_range_values(
    tmp_path: Path, section: str, name: str, hint: Any, bounds: tuple[Any, Any]
) -> None:
    key, (low, high) = f"{section}.{name}", bounds
    assert hint in (int, float)
    default = getattr(getattr(Config(), section), name)
    assert low is None or default >= low
    assert high is None or default <= high
    outside = ([] if low is None else [low - 1]) + ([] if high is None else [high + 1])
    assert outside, f"{key} has a range with no bound"
    for value in outside:
        shown = float(value) if hint is float else value  # numbers are stored as the field's type
        assert problems_of({section: {name: value}}, tmp_path) == [
            f"{key}: must be between {low} and {high}, got {shown}"
        ]
    # The bounds themselves are allowed (with the keys a rule ties this one to set so that
    # the rule holds: a lease must outlast two heartbeats and the attribute cache).
    tied = {"coordination": {"heartbeat_s": 0.05, "attribute_cache_s": 0, "lease_s": 10_000}}
    for value in (v for v in (low, high) if v is not None):
        table = {section: {**tied.get(section, {}), name: value}}
        cfg = parse_config(table, base_dir=tmp_path)
        assert getattr(getattr(cfg, section), name) == value


def test_a_lease_shorter_than_two_heartbeats_and_the_attribute_cache_is_refused(
    tmp_path: Path,
) -> None:
    """Another Mac sees a heartbeat's mtime up to attribute_cache_s late: a shorter lease
    would have it break claims of daemons that are alive."""
    table = {"coordination": {"heartbeat_s": 15, "lease_s": 50, "attribute_cache_s": 30}}
    assert problems_of(table, tmp_path) == [
        "coordination.lease_s: 50 s is too short: other Macs may see a live claim's "
        "heartbeat up to heartbeat_s + attribute_cache_s late, and would break it; set it "
        "to at least 2 × heartbeat_s + attribute_cache_s = 60 s"
    ]
    table["coordination"]["lease_s"] = 60
    assert parse_config(table, base_dir=tmp_path).coordination.lease_s == 60


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    problems = problems_of(
        {"server": {"max_attempts": "3", "url": 1}, "watch": {"mode": "inotify"}}, tmp_path
    )
    assert len(problems) == 3


def test_include_takes_a_json_base_with_nulls_and_table_overrides(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"refiner_model": None, "steps": 30, "a": 1}))
    cfg = parse_config(
        {
            "generate": {"payload": {"include": "r.json", "steps": 8}},
            "upscale": {"passes": [{"include": "r.json"}, {"strength": 0.3}]},
        },
        base_dir=tmp_path,
    )
    assert cfg.generate.payload == {"refiner_model": None, "steps": 8, "a": 1}
    assert cfg.upscale.passes[0] == {"refiner_model": None, "steps": 30, "a": 1}
    assert cfg.upscale.passes[1] == {"strength": 0.3}


def test_missing_include_names_key_and_path(tmp_path: Path) -> None:
    problems = problems_of({"generate": {"payload": {"include": "nope.json"}}}, tmp_path)
    assert problems[0].startswith("generate.payload.include: cannot read")
    assert "nope.json" in problems[0]


def test_shipped_config_loads_with_every_spec_key() -> None:
    cfg = load_config(REPO / "config.toml")
    assert isinstance(cfg, Config)
    assert cfg.generate.payload["refiner_model"] == "sd_xl_refiner_1.0_f16.ckpt"
    assert cfg.generate.payload["loras"] == []
    assert len(cfg.upscale.passes) == 2
    text = (REPO / "config.toml").read_text()
    for key in (
        "root",
        "url",
        "connect_timeout_s",
        "read_timeout_s",
        "max_attempts",
        "max_concurrent",
        "prompt_template",
        "negative_prompt",
        "server_url",
        "expect_size",
        "model_type",
        "checkpoint",
        "device",
        "points_per_side",
        "pred_iou_thresh",
        "stability_score_thresh",
        "min_area_fraction",
        "cutout",
        "padding",
        "mode",
        "rescan_interval_s",
        "settle_s",
        "host_id",
        "heartbeat_s",
        "lease_s",
        "level",
        "file",
    ):
        assert f"\n{key} = " in text, key


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[server]\nmax_attempts = "3"\n', 'server.max_attempts: expected an integer, got "3"'),
        ("[server]\nretries = 3\n", "server.retries: unknown key"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_cli_exits_2_naming_the_key(tmp_path: Path, toml: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    for command in (["run", "--once"], ["status"]):
        result = run_emif(*command, "--config", str(path))
        assert result.returncode == 2
        assert needle in result.stderr
        assert str(path) in result.stderr


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    result = run_emif("run", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml" in result.stderr


def test_no_enabled_stage_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[paths]\nroot = "{tmp_path / "root"}"\n'
        "[generate]\nenabled = false\n[upscale]\nenabled = false\n[segment]\nenabled = false\n"
    )
    result = run_emif("run", "--once", "--config", str(path))
    assert result.returncode == 2
    assert "no_stages" in result.stderr
    assert "enabled" in result.stderr


def test_a_root_whose_share_is_not_mounted_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[paths]\nroot = "{tmp_path / "Volumes" / "share" / "pipeline"}"\n')
    result = run_emif("run", "--once", "--config", str(path))
    assert result.returncode == 2
    assert "is the share mounted?" in result.stderr


@pytest.mark.parametrize("url", ["127.0.0.1:7860", "localhost", "ftp://x", "http://"])
def test_a_server_url_without_http_is_refused_at_once(tmp_path: Path, url: str) -> None:
    """Not later, with a misleading 'is the server on?' hint."""
    assert problems_of({"server": {"url": url}}, tmp_path) == [
        f"server.url: {url!r} is not an http:// or https:// address; write it like "
        "http://127.0.0.1:7860"
    ]
