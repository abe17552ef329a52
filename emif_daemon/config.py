"""config.toml → frozen, validated dataclasses.

Every key is optional with the default of SPEC §6. An unknown key, a wrong type or a value
out of range is an error that names the key (``server.max_attempts: expected an integer,
got "3"``); all problems are reported together so a user fixes the file in one go.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_PROMPT_TEMPLATE = (
    "{prompt}, (35mm lens photography), extremely detailed, 4k, shot on dslr, "
    "photorealistic, photographic, sharp"
)


@dataclass(frozen=True)
class PathsConfig:
    root: Path = Path("pipeline")


@dataclass(frozen=True)
class ServerConfig:
    url: str = "http://127.0.0.1:7860"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 900.0
    max_attempts: int = 3
    max_concurrent: int = 1
    backoff_s: float = 2.0


@dataclass(frozen=True)
class GenerateConfig:
    enabled: bool = True
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    negative_prompt: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UpscaleConfig:
    enabled: bool = True
    server_url: str = ""
    expect_size: tuple[int, ...] = (2048, 2048)
    passes: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class SegmentConfig:
    enabled: bool = True
    model_type: str = "vit_h"
    checkpoint: Path = Path("models/sam_vit_h_4b8939.pth")
    device: str = "auto"
    points_per_side: int = 32
    points_per_batch: int = 0  # 0: chosen for the device (small batches are faster on a CPU)
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    min_area_fraction: float = 0.001
    cutout: str = "square"
    padding: float = 0.05
    recycle_after: int = 50


@dataclass(frozen=True)
class WatchConfig:
    mode: str = "auto"
    rescan_interval_s: float = 15.0
    settle_s: float = 2.0


@dataclass(frozen=True)
class CoordinationConfig:
    host_id: str = ""
    heartbeat_s: float = 15.0
    lease_s: float = 120.0


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    file: str = ""
    progress_s: float = 60.0


@dataclass(frozen=True)
class MacosConfig:
    prevent_sleep: bool = True


@dataclass(frozen=True)
class ReportConfig:
    watts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NotifyConfig:
    webhook_url: str = ""
    macos_banner: bool = False
    max_retries: int = 8


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    upscale: UpscaleConfig = field(default_factory=UpscaleConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    macos: MacosConfig = field(default_factory=MacosConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    source: Path | None = None  # the file this came from; not a TOML key

    @property
    def upscale_url(self) -> str:
        return self.upscale.server_url or self.server.url


CHOICES: dict[str, tuple[str, ...]] = {
    "segment.model_type": ("vit_h", "vit_l", "vit_b"),
    "segment.device": ("auto", "mps", "cuda", "cpu"),
    "segment.cutout": ("square", "canvas"),
    "watch.mode": ("auto", "poll"),
    "logging.level": ("debug", "info", "warning", "error"),
}

# (minimum, maximum) for numbers; None = unbounded on that side.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "server.connect_timeout_s": (0.1, None),
    "server.read_timeout_s": (1, None),
    "server.max_attempts": (1, 100),
    "server.max_concurrent": (1, 64),
    "server.backoff_s": (0.01, 600),
    "segment.points_per_side": (1, 256),
    "segment.points_per_batch": (0, 1024),
    "segment.pred_iou_thresh": (0, 1),
    "segment.stability_score_thresh": (0, 1),
    "segment.min_area_fraction": (0, 1),
    "segment.padding": (0, 1),
    "segment.recycle_after": (1, None),
    "watch.rescan_interval_s": (0.05, None),
    "watch.settle_s": (0, None),
    "coordination.heartbeat_s": (0.05, None),
    "coordination.lease_s": (0.1, None),
    "notify.max_retries": (0, 100),
    "logging.progress_s": (0.1, None),
}

PATH_KEYS = {"paths.root", "segment.checkpoint"}
PAYLOAD_KEYS = {"generate.payload", "upscale.passes"}


def resolve_config_path(cli_path: str | None) -> Path:
    """`--config PATH`, else `$EMIF_CONFIG`, else `./config.toml` (SPEC §6)."""
    return Path(cli_path or os.environ.get("EMIF_CONFIG") or "config.toml")


def load_config(path: Path) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read the config file: {exc.strerror}"], str(path)) from exc
    try:
        table = tomllib.loads(raw.decode("utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from exc
    return parse_config(table, base_dir=path.resolve().parent, source=path.resolve())


def parse_config(table: dict[str, Any], *, base_dir: Path, source: Path | None = None) -> Config:
    """Validate a parsed TOML table; pure apart from reading payload includes."""
    problems: list[str] = []
    sections = _build(Config, table, "", base_dir, problems)
    if problems:
        raise ConfigError(problems, str(source or ""))
    return dataclasses.replace(sections, source=source)


def _build(cls: type, table: dict[str, Any], prefix: str, base: Path, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    for key in table:
        if key not in known:
            problems.append(f"{prefix}{key}: unknown key (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}{f.name}"
        if f.name not in table and dotted in PATH_KEYS:  # defaults are relative to the file too
            values[f.name] = (base / f.default).resolve()  # type: ignore[operator]
    for name in known:
        if name not in table and not dataclasses.is_dataclass(hints[name]):
            continue
        dotted = f"{prefix}{name}"
        value = _convert(dotted, hints[name], table.get(name, {}), base, problems)
        if value is not _BAD:
            values[name] = value
    return cls(**values)


_BAD = object()


def _describe(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _convert(key: str, hint: Any, value: Any, base: Path, problems: list[str]) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table [{key}], got {_describe(value)}")
            return _BAD
        return _build(hint, value, key + ".", base, problems)
    if key in PAYLOAD_KEYS:
        return _convert_payloads(key, value, base, problems)
    checked = _check_scalar(key, hint, value)
    if isinstance(checked, str):
        problems.append(checked)
        return _BAD
    value = checked[0]
    if key in CHOICES and value not in CHOICES[key]:
        problems.append(f"{key}: must be one of {', '.join(CHOICES[key])}, got {_describe(value)}")
        return _BAD
    low, high = RANGES.get(key, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        problems.append(f"{key}: must be between {low} and {high}, got {value}")
        return _BAD
    if key in PATH_KEYS:
        return (base / Path(value).expanduser()).resolve()
    return value


def _check_scalar(key: str, hint: Any, value: Any) -> tuple[Any] | str:
    """Return (converted,) or an error message naming the key."""
    origin = typing.get_origin(hint)
    if hint is bool:
        ok, want = isinstance(value, bool), "true or false"
    elif hint is int:
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        want = "a number"
        value = float(value) if ok else value
    elif hint is str or hint is Path:
        ok, want = isinstance(value, str), "a string"
    elif origin is dict:
        ok, want = isinstance(value, dict), "a table"
    elif origin is tuple:
        ok = isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        want = "a list of integers"
        value = tuple(value) if ok else value
    elif origin in (types.UnionType, typing.Union):
        ok, want = True, ""
    else:  # pragma: no cover - a new field type without a check is a programming error
        raise TypeError(f"no check for {key}: {hint}")
    return (value,) if ok else f"{key}: expected {want}, got {_describe(value)}"


def _convert_payloads(key: str, value: Any, base: Path, problems: list[str]) -> Any:
    if key == "generate.payload":
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table [{key}], got {_describe(value)}")
            return _BAD
        return resolve_include(key, value, base, problems)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.append(f"{key}: expected [[{key}]] tables, got {_describe(value)}")
        return _BAD
    return tuple(resolve_include(f"{key}[{i}]", v, base, problems) for i, v in enumerate(value))


def resolve_include(key: str, table: dict[str, Any], base: Path, problems: list[str]) -> dict:
    """`include = "recipes/x.json"`: the JSON object is the base, the table's keys override it.

    TOML has no null, and Draw Things clears a setting only with JSON null, so recipes are
    JSON in the server's own format (SPEC §4).
    """
    table = dict(table)
    include = table.pop("include", None)
    if include is None:
        return table
    if not isinstance(include, str):
        problems.append(f"{key}.include: expected a path string, got {_describe(include)}")
        return table
    path = (base / Path(include).expanduser()).resolve()
    try:
        loaded = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        problems.append(f"{key}.include: cannot read {path}: {exc.strerror}")
        return table
    except json.JSONDecodeError as exc:
        problems.append(f"{key}.include: {path} is not valid JSON: {exc}")
        return table
    if not isinstance(loaded, dict):
        problems.append(f"{key}.include: {path} must hold a JSON object")
        return table
    return {**loaded, **table}
