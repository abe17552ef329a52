"""config.toml → validated dataclasses; every error names its key; the CLI exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emif_daemon.config import Config, load_config, parse_config
from emif_daemon.errors import ConfigError
from tests.conftest import REPO, run_emif


def problems_of(table: dict, base: Path) -> list[str]:
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
def test_each_wrong_key_or_type_is_named(tmp_path: Path, table: dict, message: str) -> None:
    problems = problems_of(table, tmp_path)
    assert any(p.startswith(message) for p in problems), problems


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
        "root", "url", "connect_timeout_s", "read_timeout_s", "max_attempts", "max_concurrent",
        "prompt_template", "negative_prompt", "server_url", "expect_size", "model_type",
        "checkpoint", "device", "points_per_side", "pred_iou_thresh", "stability_score_thresh",
        "min_area_fraction", "cutout", "padding", "mode", "rescan_interval_s", "settle_s",
        "host_id", "heartbeat_s", "lease_s", "level", "file",
    ):  # fmt: skip
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
