"""config.toml → frozen, validated dataclasses.

Every key is optional, with the default given on its field (docs/configuration.md). The
fields carry their constraints too, read generically by the loader: choices as ``Literal``
types, ranges in metadata (``bounded``), path-ness as the ``Path`` type, payload tables in
metadata (``PAYLOAD``). An unknown key, a wrong type or a value out of range is an error that
names the key (``server.max_attempts: expected an integer, got "3"``); all problems are
reported together so a user fixes the file in one go.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DEFAULT_PROMPT_TEMPLATE = (
    "{prompt}, (35mm lens photography), extremely detailed, 4k, shot on dslr, "
    "photorealistic, photographic, sharp"
)


N = TypeVar("N", int, float)
D = TypeVar("D", bound="DataclassInstance")


def bounded(default: N, low: float | None, high: float | None) -> N:
    """A number field with its allowed range; None = unbounded on that side.

    The bounds are printed as written in error messages, so keep 1 (not 1.0) where a message
    should say "between 1 and 100".
    """
    return field(default=default, metadata={"range": (low, high)})


# A table (or list of tables) sent to the server as is, once its `include` is resolved.
PAYLOAD: Mapping[str, bool] = types.MappingProxyType({"payload": True})


@dataclass(frozen=True)
class PathsConfig:
    root: Path = Path("pipeline")


@dataclass(frozen=True)
class ServerConfig:
    url: str = "http://127.0.0.1:7860"
    connect_timeout_s: float = bounded(5.0, 0.1, None)
    read_timeout_s: float = bounded(900.0, 1, None)
    max_attempts: int = bounded(3, 1, 100)
    max_concurrent: int = bounded(1, 1, 64)
    backoff_s: float = bounded(2.0, 0.01, 600)


@dataclass(frozen=True)
class GenerateConfig:
    enabled: bool = True
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    negative_prompt: str = ""
    payload: dict[str, Any] = field(default_factory=dict, metadata=PAYLOAD)
    # Images one prompts file may ask for: a typo (count 10000 × 1000 jobs) is refused at
    # validation instead of exhausting memory and the week.
    max_items_per_file: int = bounded(100_000, 1, 10_000_000)


@dataclass(frozen=True)
class UpscaleConfig:
    enabled: bool = True
    server_url: str = ""
    expect_size: tuple[int, ...] = (2048, 2048)
    passes: tuple[dict[str, Any], ...] = field(default=(), metadata=PAYLOAD)


@dataclass(frozen=True)
class SegmentConfig:
    enabled: bool = True
    model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    checkpoint: Path = Path("models/sam_vit_h_4b8939.pth")
    device: Literal["auto", "mps", "cuda", "cpu"] = "auto"
    points_per_side: int = bounded(32, 1, 256)
    # 0: chosen for the device (small batches are faster on a CPU)
    points_per_batch: int = bounded(0, 0, 1024)
    pred_iou_thresh: float = bounded(0.88, 0, 1)
    stability_score_thresh: float = bounded(0.95, 0, 1)
    min_area_fraction: float = bounded(0.001, 0, 1)
    cutout: Literal["square", "canvas"] = "square"
    padding: float = bounded(0.05, 0, 1)
    recycle_after: int = bounded(50, 1, None)


@dataclass(frozen=True)
class WatchConfig:
    mode: Literal["auto", "poll"] = "auto"
    rescan_interval_s: float = bounded(15.0, 0.05, None)
    settle_s: float = bounded(2.0, 0, None)


@dataclass(frozen=True)
class CoordinationConfig:
    host_id: str = ""
    heartbeat_s: float = bounded(15.0, 0.05, None)
    lease_s: float = bounded(120.0, 0.1, None)


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: str = ""
    progress_s: float = bounded(60.0, 0.1, None)


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
    max_retries: int = bounded(8, 0, 100)


@dataclass(frozen=True)
class GalleryConfig:
    enabled: bool = True  # the daemon refreshes the gallery pages its finished work touched


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
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    source: Path | None = None  # the file this came from; not a TOML key

    @property
    def upscale_url(self) -> str:
        return self.upscale.server_url or self.server.url


def resolve_config_path(cli_path: str | None) -> Path:
    """`--config PATH`, else `$EMIF_CONFIG`, else `./config.toml`.

    (docs/configuration.md#finding-the-file)
    """
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


# What a field's declaration says about its key, read generically from the dataclasses:
#   a dataclass type           a section, [name]
#   Literal["a", "b"]          one of these choices
#   metadata {"range": (l, h)} a number within [l, h] (see `bounded`)
#   Path                       a path, relative to the config file's folder
#   metadata PAYLOAD          a table (or list of tables) for the server


def _build(cls: type[D], table: dict[str, Any], prefix: str, base: Path, problems: list[str]) -> D:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name != "source"]
    known = sorted(f.name for f in fields)
    for key in table:
        if key not in known:
            problems.append(f"{prefix}{key}: unknown key (known: {', '.join(known)})")
    values: dict[str, Any] = {}
    for f in fields:
        hint, key = hints[f.name], f"{prefix}{f.name}"
        if f.name in table:
            value = _convert(key, hint, f.metadata, table[f.name], base, problems)
        elif _is_section(hint):  # a missing section still needs its path defaults resolved
            value = _build(hint, {}, key + ".", base, problems)
        elif hint is Path and isinstance(f.default, Path):  # defaults are relative to the file
            value = (base / f.default).resolve()
        else:
            continue
        if value is not _BAD:
            values[f.name] = value
    return cls(**values)


_BAD = object()


def _is_section(hint: object) -> TypeGuard[type[DataclassInstance]]:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def choices_of(hint: object) -> tuple[Any, ...]:
    """The values a `Literal[...]` field allows; () for any other type."""
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def _describe(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _convert(
    key: str,
    hint: object,
    metadata: Mapping[str, Any],
    value: Any,
    base: Path,
    problems: list[str],
) -> Any:
    if _is_section(hint):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table [{key}], got {_describe(value)}")
            return _BAD
        return _build(hint, value, key + ".", base, problems)
    if metadata.get("payload"):
        return _convert_payloads(key, hint, value, base, problems)
    checked = _check_scalar(key, hint, value)
    if isinstance(checked, str):
        problems.append(checked)
        return _BAD
    value = checked[0]
    choices = choices_of(hint)
    if choices and value not in choices:
        problems.append(f"{key}: must be one of {', '.join(choices)}, got {_describe(value)}")
        return _BAD
    low, high = metadata.get("range", (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        problems.append(f"{key}: must be between {low} and {high}, got {value}")
        return _BAD
    if hint is Path:
        return (base / Path(value).expanduser()).resolve()
    return value


def _check_scalar(key: str, hint: object, value: Any) -> tuple[Any] | str:
    """Return (converted,) or an error message naming the key."""
    choices = choices_of(hint)
    if choices:  # checked as the choices' type first (all strings), then against the choices
        hint = type(choices[0])
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


def _convert_payloads(key: str, hint: object, value: Any, base: Path, problems: list[str]) -> Any:
    if typing.get_origin(hint) is dict:  # one table, [key]
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table [{key}], got {_describe(value)}")
            return _BAD
        return resolve_include(key, value, base, problems)
    # a tuple of tables, [[key]]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.append(f"{key}: expected [[{key}]] tables, got {_describe(value)}")
        return _BAD
    return tuple(resolve_include(f"{key}[{i}]", v, base, problems) for i, v in enumerate(value))


def resolve_include(
    key: str, table: dict[str, Any], base: Path, problems: list[str]
) -> dict[str, Any]:
    """`include = "recipes/x.json"`: the JSON object is the base, the table's keys override it.

    TOML has no null, and Draw Things clears a setting only with JSON null, so recipes are
    JSON in the server's own format (docs/servers.md#payloads).
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
