"""What each server's request keys are: Draw Things' keys, aliases, types and ranges, and
AUTOMATIC1111's fields (docs/servers.md#payloads). Pure: no I/O.

Used before anything is sent (`emif check`, `emif validate`, the stages' preflight) and when
payloads are merged, so a key and its alias never travel together.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from emif_daemon.servers.dt_entries import entries_problems

Kind = Literal["drawthings", "a1111"]


@dataclass(frozen=True)
class Param:
    """One Draw Things parameter: its primary key and how the server decodes it."""

    key: str
    type: str  # int | double | bool | string | enum | json
    low: float | None = None
    high: float | None = None
    aliases: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    sendable: bool = True  # four keys always answer 422 "More than one key"
    added: str = ""  # date of the app build that first knew it; "" = every build


def _p(
    key: str, type_: str, low: float | None = None, high: float | None = None, **kw: Any
) -> Param:
    return Param(key, type_, low, high, **kw)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# fmt: off
# Every parameter of Draw Things' HTTP API, in the order it decodes them.
DT_PARAMS: tuple[Param, ...] = (
    _p("model", "string"),
    _p("width", "int", 128, 8192),
    _p("height", "int", 128, 8192),
    _p("seed", "int", -1, 4294967295),
    _p("guidance_scale", "double", 0, 50, aliases=("cfg_scale",)),
    _p("seed_mode", "enum", values=("Legacy", "Scale Alike", "Torch CPU Compatible",
                                    "NVIDIA GPU Compatible")),
    _p("steps", "int", 1, 150),
    _p("batch_count", "int", 1, 100, aliases=("n_iter",)),
    _p("batch_size", "int", 1, 4),
    _p("sampler", "enum", aliases=("sampler_name", "sampler_index"), values=(
        "DPM++ 2M Karras", "Euler a", "DDIM", "UniPC", "DPM++ SDE Karras", "PLMS", "LCM",
        "Euler A Substep", "DPM++ SDE Substep", "TCD", "TCD Trailing", "Euler A Trailing",
        "DPM++ SDE Trailing", "DPM++ 2M AYS", "Euler A AYS", "DPM++ SDE AYS",
        "DPM++ 2M Trailing", "DDIM Trailing", "UniPC Trailing", "UniPC AYS")),
    _p("strength", "double", 0, 1, aliases=("denoising_strength",)),
    _p("clip_skip", "int", 1, 23),
    _p("image_guidance", "double", 0, 25),
    _p("mask_blur", "double", 0, 25),
    _p("mask_blur_outset", "int", -100, 1000),
    _p("sharpness", "double", 0, 30),
    _p("clip_weight", "double", 0, 1),
    _p("negative_prompt_for_image_prior", "bool"),
    _p("image_prior_steps", "int", 3, 60),
    _p("prompt", "string"),
    _p("negative_prompt", "string"),
    _p("hires_fix", "bool", aliases=("enable_hr",)),
    _p("hires_fix_width", "int", 128, 2048, aliases=("firstphase_width",)),
    _p("hires_fix_height", "int", 128, 2048, aliases=("firstphase_height",)),
    _p("hires_fix_strength", "double", 0, 1),
    _p("tiled_decoding", "bool"),
    _p("decoding_tile_width", "int", 128, 2048),
    _p("decoding_tile_height", "int", 128, 2048),
    _p("decoding_tile_overlap", "int", 64, 1024),
    _p("original_width", "int", 128, 2048),
    _p("original_height", "int", 128, 2048),
    _p("crop_top", "int", 0, 1024),
    _p("crop_left", "int", 0, 1024),
    _p("target_width", "int", 128, 2048),
    _p("target_height", "int", 128, 2048),
    _p("negative_original_width", "int", 128, 2048),
    _p("negative_original_height", "int", 128, 2048),
    _p("aesthetic_score", "double", 0, 10),
    _p("negative_aesthetic_score", "double", 0, 10),
    _p("zero_negative_prompt", "bool"),
    _p("refiner_model", "string"),
    _p("refiner_start", "double", 0, 1),
    _p("num_frames", "int", 1, 201),
    _p("fps", "int", 1, 30),
    _p("motion_scale", "int", 0, 255),
    _p("guiding_frame_noise", "double", 0, 1),
    _p("start_frame_guidance", "double", 0, 25),
    _p("shift", "double", 0.1, 8),
    _p("stage_2_guidance", "double", 0, 25),
    _p("stage_2_shift", "double", 0.1, 5),
    _p("loras", "json"),
    _p("controls", "json"),
    _p("stochastic_sampling_gamma", "double", 0, 1),
    _p("preserve_original_after_inpaint", "bool"),
    _p("tiled_diffusion", "bool"),
    _p("diffusion_tile_width", "int", 128, 2048),
    _p("diffusion_tile_height", "int", 128, 2048),
    _p("diffusion_tile_overlap", "int", 64, 1024),
    _p("upscaler", "string"),
    _p("upscaler_scale", "int", 0, 4, aliases=("upscaler_scale_factor",)),
    _p("t5_text_encoder_decoding", "bool"),
    _p("separate_clip_l", "bool"),
    _p("clip_l_text", "string"),
    _p("separate_open_clip_g", "bool"),
    _p("open_clip_g_text", "string"),
    _p("speed_up_with_guidance_embed", "bool"),
    _p("guidance_embed", "double", 0, 25),
    _p("resolution_dependent_shift", "bool"),
    _p("tea_cache_start", "int", 0, 1000, added="2025-04-01"),
    _p("tea_cache_end", "int", 0, 1000, added="2025-04-01"),
    _p("tea_cache_threshold", "double", 0, 1, added="2025-04-01"),
    _p("tea_cache_max_skip_steps", "int", 1, 1000, added="2025-05-02"),
    _p("tea_cache", "bool", added="2025-04-01"),
    _p("separate_t5", "bool", added="2025-04-23"),
    _p("t5_text", "string", added="2025-04-23"),
    _p("causal_inference", "int", 0, 1000, added="2025-05-20"),
    _p("causal_inference_pad", "int", 0, 1000, added="2025-06-27"),
    _p("cfg_zero_star", "bool", added="2025-07-20"),
    _p("cfg_zero_init_steps", "int", 0, 1000, added="2025-07-20"),
    _p("compression_artifacts", "enum", values=("disabled", "h264", "h265", "jpeg"),
       sendable=False, added="2026-02-20"),
    _p("compression_artifacts_quality", "double", 0, 100, sendable=False, added="2026-02-20"),
    _p("color_calibration", "enum", values=("none", "lab"), sendable=False, added="2026-07-07"),
    _p("expand_prompt_to_json", "bool", sendable=False, added="2026-07-14"),
)
DT_EXTRA_KEYS = {"restore_faces": "bool", "init_images": "json"}  # decoded before the rest
DT_BY_KEY: Mapping[str, Param] = {s: p for p in DT_PARAMS for s in (p.key, *p.aliases)}

# AUTOMATIC1111 1.10 / Forge request fields; anything else is silently ignored.
A1111_COMMON = _words("""
    prompt negative_prompt styles seed subseed subseed_strength seed_resize_from_h
    seed_resize_from_w sampler_name sampler_index scheduler batch_size n_iter steps cfg_scale
    distilled_cfg_scale width height restore_faces tiling do_not_save_samples do_not_save_grid
    eta denoising_strength s_min_uncond s_churn s_tmax s_tmin s_noise override_settings
    override_settings_restore_afterwards refiner_checkpoint refiner_switch_at
    disable_extra_networks firstpass_image comments force_task_id script_name script_args
    send_images save_images alwayson_scripts infotext""")
A1111_FIELDS: Mapping[str, frozenset[str]] = {
    "txt2img": A1111_COMMON | _words("""enable_hr firstphase_width firstphase_height hr_scale
        hr_upscaler hr_second_pass_steps hr_resize_x hr_resize_y hr_checkpoint_name
        hr_sampler_name hr_scheduler hr_prompt hr_negative_prompt"""),
    "img2img": A1111_COMMON | _words("""init_images resize_mode image_cfg_scale mask mask_blur_x
        mask_blur_y mask_blur mask_round inpainting_fill inpaint_full_res
        inpaint_full_res_padding inpainting_mask_invert initial_noise_multiplier latent_mask
        include_init_images"""),
    "extras": _words("""image resize_mode show_extras_results gfpgan_visibility
        codeformer_visibility codeformer_weight upscaling_resize upscaling_resize_w
        upscaling_resize_h upscaling_crop upscaler_1 upscaler_2 extras_upscaler_2_visibility
        upscale_first"""),
}
# fmt: on
A1111_ANY = frozenset().union(*A1111_FIELDS.values())
DT_ONLY = frozenset(DT_BY_KEY) - A1111_ANY
A1111_ONLY = A1111_ANY - frozenset(DT_BY_KEY) - frozenset(DT_EXTRA_KEYS)
ENDPOINTS = ("txt2img", "img2img", "extras")


def guess_kind(payload: Mapping[str, Any]) -> Kind | None:
    """Which server a payload is written for, from the keys only one of them knows."""
    dt = sum(1 for k in payload if k in DT_ONLY)
    a1 = sum(1 for k in payload if k in A1111_ONLY)
    if dt == a1:
        return None
    return "drawthings" if dt > a1 else "a1111"


def alias_group(key: str) -> tuple[str, ...]:
    """Every spelling of the parameter `key` belongs to (just `key` when it has no alias)."""
    param = DT_BY_KEY.get(key)
    if param is None or not param.aliases or param.aliases == (param.key,):
        return (key,)
    return (param.key, *param.aliases)


def merge_payload(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s keys on top; a key spelled differently from the one `base`
    uses for the same parameter (`cfg_scale` over `guidance_scale`) replaces it under the
    base's spelling, so one key is sent (Draw Things answers 422 to both)."""
    merged = dict(base)
    for key, value in over.items():
        spellings = alias_group(key)
        present = [s for s in spellings if s in merged]
        merged[present[0] if present else key] = value
    return merged


def dt_value_problem(key: str, value: Any) -> str | None:
    """Why Draw Things would refuse `value` for `key` (type, range, exact enum name), or None.

    JSON null is always accepted: it clears a string and leaves any other key at the app's
    value (except an enum, which it refuses).
    """
    param = DT_BY_KEY.get(key)
    if param is None:
        kind = DT_EXTRA_KEYS.get(key)
        ok = kind is None or value is None or kind != "bool" or isinstance(value, bool)
        return None if ok else "expected true or false"
    if value is None:
        return (
            "null is refused for this key (send one of its names)" if param.type == "enum" else None
        )
    if param.type == "enum":
        if value in param.values:
            return None
        return f"must be exactly one of {', '.join(param.values)} (case matters), got {value!r}"
    want = _type_problem(param.type, value)
    if want:
        return want
    if param.low is not None and param.high is not None and not param.low <= value <= param.high:
        return f"must be between {_num(param.low)} and {_num(param.high)}, got {_num(value)}"
    return None


def _type_problem(type_: str, value: Any) -> str | None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if type_ == "int" and not (number and float(value).is_integer()):
        return f"expected an integer, got {value!r}"
    if type_ == "double" and not number:
        return f"expected a number, got {value!r}"
    if type_ == "bool" and not isinstance(value, bool):
        return f"expected true or false, got {value!r}"
    if type_ == "string" and not isinstance(value, str):
        return f"expected a string or null, got {value!r}"
    return None


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def dt_payload_problems(
    payload: Mapping[str, Any], known: Iterable[str] | None = None
) -> list[str]:
    """Every reason Draw Things would answer 422 to this payload's keys, one per key.

    `known`: the primary keys the running build lists at `GET /` (older builds know fewer).
    """
    known_set = set(known) if known is not None else None
    problems: list[str] = []
    seen: dict[str, str] = {}
    for key, value in payload.items():
        param = DT_BY_KEY.get(key)
        if param is None and key not in DT_EXTRA_KEYS:
            hint = " (an AUTOMATIC1111 key)" if key in A1111_ANY else ""
            problems.append(f"{key}: not a Draw Things key{hint}; Draw Things answers 422")
            continue
        if param is not None:
            if param.key in seen:
                problems.append(
                    f"{key}: the same setting as {seen[param.key]}; send only one of them"
                )
            seen[param.key] = key
            if not param.sendable:
                problems.append(
                    f"{key}: can never be sent (Draw Things answers 422); set it in the app"
                )
                continue
            if known_set is not None and param.key not in known_set:
                since = f" (added {param.added})" if param.added else ""
                problems.append(
                    f"{key}: this Draw Things build does not know it{since}; update Draw Things "
                    "or remove the key"
                )
                continue
        why = dt_value_problem(key, value)
        if why:
            problems.append(f"{key}: {why}")
    problems += entries_problems(payload)
    return problems


A1111_NULL = (
    "null is not sent to AUTOMATIC1111: it takes null as the value, not as the default "
    "(`width: null` is a 500 for every item); leave the key out"
)


def a1111_payload_problems(payload: Mapping[str, Any], endpoint: str) -> list[str]:
    """Keys AUTOMATIC1111 would silently ignore on this endpoint, and null values (its
    fields take null as a value: a 500, or a setting cleared)."""
    fields = A1111_FIELDS.get(endpoint, A1111_ANY)
    problems = []
    for key, value in payload.items():
        if key not in fields:
            hint = " (a Draw Things key)" if key in DT_BY_KEY else ""
            problems.append(
                f"{key}: not an AUTOMATIC1111 {endpoint} field{hint}; it would be ignored"
            )
        elif value is None:
            problems.append(f"{key}: {A1111_NULL}")
    override = payload.get("override_settings")
    for key, value in override.items() if isinstance(override, Mapping) else ():
        if value is None:
            problems.append(f"override_settings.{key}: {A1111_NULL}")
    return problems


def payload_problems(payload: Mapping[str, Any], kind: Kind, endpoint: str) -> list[str]:
    """The offline check of one payload for a server kind (keys, aliases, types, ranges)."""
    if kind == "drawthings":
        return dt_payload_problems(payload)
    return a1111_payload_problems(payload, endpoint)


EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


def checkpoint_stem(name: str) -> str:
    """`SDXL/juggernautXL_v9.safetensors [abc123]` → `juggernautXL_v9`: the form A1111 matches
    in any subfolder, and reports back as `info.sd_model_name`."""
    name = name.strip()
    if name.endswith("]") and " [" in name:
        name = name.rsplit(" [", 1)[0]
    base = posixpath.basename(name.replace("\\", "/"))
    for ext in EXTENSIONS:
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


class Recipe(dict[str, Any]):
    """A payload table of the config, remembering where it was written, so a message about
    one of its keys can name the file to fix."""

    def __init__(self, data: Mapping[str, Any], *, key: str, include: str = "") -> None:
        super().__init__(data)
        self.key = key  # the config key: "generate.payload", "upscale.passes[1]"
        self.include = include  # the JSON file it includes, as written ("" when none)

    @property
    def where(self) -> str:
        return f"{self.include} ({self.key})" if self.include else f"[{self.key}] of the config"


def where_of(payload: Mapping[str, Any], fallback: str) -> str:
    return payload.where if isinstance(payload, Recipe) else fallback


def recipe_file(payload: Mapping[str, Any]) -> str | None:
    """The JSON recipe a payload includes, as written in the config (None: none)."""
    return (payload.include or None) if isinstance(payload, Recipe) else None


def override_problems(
    recipe: Mapping[str, Any], override: Mapping[str, Any], kind: Kind, endpoint: str
) -> list[str]:
    """Problems of the keys a job's payload sets over `recipe`, as the server would see the
    merged payload (an alias of a recipe key is checked under the recipe's spelling)."""
    touched = set()
    for key in override:
        present = [s for s in alias_group(key) if s in recipe]
        touched.add(present[0] if present else key)
    merged = merge_payload(recipe, override)
    found = payload_problems(merged, kind, endpoint)
    return [p for p in found if p.split(":")[0].split("[")[0] in touched]


def jobs_problems(recipe: Mapping[str, Any], jobs: Iterable[Any]) -> list[str]:
    """`emif validate`: each prompts-file job's payload (`.loc`, `.payload`) over the txt2img
    recipe, in the dialect the recipe is written in (none recognised: not checked)."""
    kind = guess_kind(recipe)
    if kind is None:
        return []
    return [
        f"{job.loc}.payload.{problem}"
        for job in jobs
        for problem in override_problems(recipe, job.payload, kind, "txt2img")
    ]
