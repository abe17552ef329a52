"""What an answer holds (its images, A1111's `info`) and what it says really ran, checked
against what was asked.

(docs/servers.md#checks-after-each-answer)

AUTOMATIC1111 drops a checkpoint override that is not an exact name, and a refiner or a
ControlNet it cannot load, and still answers HTTP 200; its `info` and the detected maps that
ControlNet appends are the only trace. Draw Things reports nothing of the kind.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from typing import Any

from emif_daemon.errors import TransientError
from emif_daemon.servers.dialects import checkpoint_stem

DECODE_SLICE = 1 << 20  # characters of base64 per decoding step (a multiple of 4)


def plain_base64(text: object) -> str:
    """An answer's image text without a `data:` prefix (accepted on answers, never sent)."""
    if not isinstance(text, str):
        raise TransientError(f"answer image is {type(text).__name__}, expected base64 text")
    return text.partition(",")[2] if text.startswith("data:") else text


def decode_image(text: object) -> bytes:
    """Base64 of one image; a `data:` prefix is accepted on answers (never sent)."""
    text = plain_base64(text)
    try:
        # In slices, so another worker waiting to send its request gets the interpreter
        # lock between them instead of after 10 ms of decoding a 2048² answer.
        if len(text) <= DECODE_SLICE:
            return binascii.a2b_base64(text, strict_mode=True)
        if len(text) % 4:
            raise binascii.Error("base64 length is not a multiple of 4")
        return b"".join(
            binascii.a2b_base64(text[i : i + DECODE_SLICE], strict_mode=True)
            for i in range(0, len(text), DECODE_SLICE)
        )
    except (binascii.Error, ValueError) as exc:
        raise TransientError(f"answer image is not valid base64: {exc}") from exc


def read_info(raw: object) -> tuple[dict[str, Any] | None, str | None]:
    """A1111's `info` (a JSON string of an object): (the object, None) or (None, why not)."""
    if raw is None:
        return None, "has no `info`"
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            return None, f"has an `info` that is not JSON ({exc})"
    if not isinstance(raw, dict):
        return None, f"has an `info` that is not a JSON object ({type(raw).__name__})"
    return raw, None


def first_image(info: dict[str, Any] | None) -> int:
    """Where the images asked for start: A1111 puts a grid first when it saves a batch
    (`save_images`), and says so in `info.index_of_first_image`."""
    first = (info or {}).get("index_of_first_image", 0)
    return first if isinstance(first, int) and not isinstance(first, bool) and first > 0 else 0


def _same_checkpoint(asked: str, name: Any, short_hash: Any) -> bool:
    if isinstance(name, str) and checkpoint_stem(asked) == name:
        return True
    if isinstance(short_hash, str) and short_hash:
        return asked == short_hash or asked.endswith(f"[{short_hash}]")
    return False


def a1111_info_problem(
    payload: Mapping[str, Any], info: Mapping[str, Any] | None, why: str | None = None
) -> str | None:
    """Why A1111's `info` shows the job ran on another checkpoint or without the refiner, or
    cannot show it (`why`: what was wrong with it)."""
    if info is None:
        return (
            f"AUTOMATIC1111's answer {why or 'has no `info`'}, so the checkpoint and refiner "
            "that ran cannot be checked; the server must be AUTOMATIC1111 (1.6 or later) or "
            "Forge answering through its own API, not through a proxy that rewrites answers"
        )
    override = payload.get("override_settings")
    asked = override.get("sd_model_checkpoint") if isinstance(override, Mapping) else None
    used = info.get("sd_model_name")
    if isinstance(asked, str) and not _same_checkpoint(asked, used, info.get("sd_model_hash")):
        return (
            f'asked for checkpoint "{asked}" but AUTOMATIC1111 ran "{used}" (a name that is not '
            "exact is silently dropped); fix override_settings.sd_model_checkpoint"
        )
    refiner, switch = payload.get("refiner_checkpoint"), payload.get("refiner_switch_at")
    if isinstance(refiner, str) and refiner and isinstance(switch, int | float) and 0 < switch < 1:
        extra = info.get("extra_generation_params")
        ran = extra.get("Refiner") if isinstance(extra, Mapping) else None
        if isinstance(ran, str) and checkpoint_stem(ran) != checkpoint_stem(refiner):
            return (
                f'asked for refiner "{refiner}" but AUTOMATIC1111 ran {ran!r}; check '
                "refiner_checkpoint"
            )
        if not isinstance(ran, str):
            return _refiner_never_ran(payload, refiner, switch)
    return None


def _refiner_never_ran(payload: Mapping[str, Any], refiner: str, switch: float) -> str:
    """A1111 swaps the refiner in when sampling reaches `switch` of the noise schedule: with
    too few steps no step gets there, and nothing says so but the missing `Refiner`."""
    steps = payload.get("steps", 50)  # the API's default
    hires = payload.get("enable_hr") is True
    second = payload.get("hr_second_pass_steps") or steps
    where = f"{steps} steps" + (f" (hi-res second pass: {second})" if hires else "")
    return (
        f'asked for refiner "{refiner}" switching in at refiner_switch_at {switch:g}, but '
        f"AUTOMATIC1111 ran none: with {where} no sampling step reached {switch:g} of the "
        "schedule (at steps 1 the switch never comes; with hi-res fix the refiner runs in the "
        "second pass); raise steps"
        + (" or hr_second_pass_steps" if hires else "")
        + ", lower refiner_switch_at, or check refiner_checkpoint"
    )


def a1111_maps_problem(payload: Mapping[str, Any], extra_images: int) -> str | None:
    """ControlNet appends one detected map per unit it ran (unless save_detected_map is
    false, or under the SD upscale script): fewer maps than units means it did not run."""
    scripts = payload.get("alwayson_scripts")
    spec = scripts.get("controlnet") if isinstance(scripts, Mapping) else None
    units = spec.get("args") if isinstance(spec, Mapping) else None
    if not isinstance(units, list) or str(payload.get("script_name", "")).lower() == "sd upscale":
        return None
    want = sum(
        1
        for u in units
        if isinstance(u, Mapping) and u.get("enabled") is True and u.get("save_detected_map", True)
    )
    if want and extra_images < want:
        return (
            f"AUTOMATIC1111 returned {extra_images} ControlNet map(s) for {want} unit(s): "
            "ControlNet did not run; check the unit's model name against /controlnet/model_list"
        )
    return None
