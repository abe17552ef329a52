"""The inside of Draw Things' `loras` and `controls` keys: what its decoder accepts
(docs/servers.md#payloads). Pure: no I/O.

Each is a JSON list of objects (`JSLoRA`, `JSControl`), each field of the Swift type it is
decoded as. Any other shape — an object instead of a list, a number where a string belongs, a
required field missing or null — is a 422 for every item, so it is refused before anything is
sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

CONTROL_FIELDS = (
    "weight",
    "guidanceStart",
    "guidanceEnd",
    "noPrompt",
    "globalAveragePooling",
    "downSamplingRate",
    "controlImportance",
    "inputOverride",
    "targetBlocks",
)
# The JSON type of each field of an entry; a "?" type may be null or left out.
LORA_TYPES = {"file": "string?", "weight": "number", "mode": "string?"}
CONTROL_TYPES = {
    "file": "string?",
    "weight": "number",
    "guidanceStart": "number",
    "guidanceEnd": "number",
    "noPrompt": "bool",
    "globalAveragePooling": "bool",
    "downSamplingRate": "number",
    "controlImportance": "string",
    "inputOverride": "string",
    "targetBlocks": "strings",
}


def entries_problems(payload: Mapping[str, Any]) -> list[str]:
    """`loras` and `controls`: a list of objects, each with the fields Draw Things requires,
    of the types it decodes (anything else is a 422 for every item)."""
    out = []
    for key, types in (("loras", LORA_TYPES), ("controls", CONTROL_TYPES)):
        value = payload.get(key)
        if value is not None and not isinstance(value, list):
            out.append(
                f"{key}: must be a list of objects, not {_json_kind(value)} (Draw Things "
                "answers 422); write [ {...} ], or [] for none"
            )
            continue
        for i, entry in enumerate(value or []):
            if not isinstance(entry, dict):
                out.append(f"{key}[{i}]: must be an object, not {_json_kind(entry)} (422)")
                continue
            out += [f"{key}[{i}].{p}" for p in _field_problems(entry, types)]
    for i, lora in enumerate(_entries(payload.get("loras"))):
        if "weight" not in lora or "file" not in lora:
            out.append(f'loras[{i}]: needs "file" and "weight"')
    for i, control in enumerate(_entries(payload.get("controls"))):
        missing = [f for f in CONTROL_FIELDS if f not in control]
        if missing:
            out.append(f"controls[{i}]: missing {', '.join(missing)} (Draw Things answers 422)")
    return out


def _field_problems(entry: Mapping[str, Any], types: Mapping[str, str]) -> list[str]:
    out = []
    for field, kind in types.items():
        if field not in entry or (entry[field] is None and kind.endswith("?")):
            continue
        value, want = entry[field], kind.rstrip("?")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = {
            "number": number,
            "bool": isinstance(value, bool),
            "string": isinstance(value, str),
            "strings": isinstance(value, list) and all(isinstance(v, str) for v in value),
        }[want]
        if not ok:
            shown = {"strings": "a list of strings", "bool": "true or false"}.get(want, f"a {want}")
            got = json.dumps(value)
            out.append(f"{field}: expected {shown}, got {got} (Draw Things answers 422)")
    return out


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else f"{json.dumps(value)[:40]}"


def _entries(value: Any) -> list[dict[str, Any]]:
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []
