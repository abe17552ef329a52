"""Reading a TOML table into frozen dataclasses by what their fields declare.

What a field's declaration says about its key, read generically:
  a dataclass type            a section, [name]
  Literal["a", "b"]           one of these choices
  metadata {"range": (l, h)}  a number within [l, h] (see `bounded`)
  Path                        a path, relative to the config file's folder
  metadata PAYLOAD            a table (or list of tables) for the server
Every problem names its key; all are collected so a user fixes the file in one go.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, TypeVar

from emif_daemon.servers.dialects import Recipe, merge_payload

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

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


def build(cls: type[D], table: dict[str, Any], prefix: str, base: Path, problems: list[str]) -> D:
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
            value = build(hint, {}, key + ".", base, problems)
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
        return build(hint, value, key + ".", base, problems)
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
        item = typing.get_args(hint)[0]  # int or str
        ok = isinstance(value, list) and all(
            isinstance(v, item) and not isinstance(v, bool) for v in value
        )
        want = "a list of integers" if item is int else "a list of strings"
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
        return _finite(key, resolve_include(key, value, base, problems), problems)
    # a tuple of tables, [[key]]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.append(f"{key}: expected [[{key}]] tables, got {_describe(value)}")
        return _BAD
    return tuple(
        _finite(f"{key}[{i}]", resolve_include(f"{key}[{i}]", v, base, problems), problems)
        for i, v in enumerate(value)
    )


def _finite(key: str, payload: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """TOML allows nan and inf; JSON has no such numbers, so no server could read them."""
    stack: list[tuple[str, Any]] = [(key, payload)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{where}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}: {value} is not a number JSON can carry; write a number")
    return payload


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
        return Recipe(table, key=key)
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
    # the table's keys win, an alias replacing the JSON's key (docs/servers.md#payloads)
    return Recipe(merge_payload(loaded, table), key=key, include=include)
