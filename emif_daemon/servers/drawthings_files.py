"""What Draw Things knows of its files: models and what they need, upscalers and their
factors, ControlNets and LoRAs and their model versions (docs/servers.md#files-on-draw-things).

The app knows a file by its specification: built into the app, or written to a registry in
its models folder when the file is downloaded from the app's lists or imported —
`custom.json` (models), `custom_controlnet.json`, `custom_lora.json`, each a JSON list of
specifications with snake_case keys. An entry the app cannot decode (a required key missing
or of the wrong type) is skipped, as if it were not there. A file whose specification the app
does not have is an unrecognised model (422), or a ControlNet or LoRA dropped without a word.
`Registry` reads those files; the specifications below are what the daemon knows without
them: the app's built-ins, and the community entries the shipped recipes use (as the app
registers them), used only to check the rules when the models folder cannot be read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Where the sandboxed app keeps its files (an external folder chosen in the app comes first).
DRAW_THINGS_MODELS = "~/Library/Containers/com.liuliu.draw-things/Data/Documents/Models"

Spec = Mapping[str, Any]


def _spec(name: str, file: str, version: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "file": file, "version": version, **more}


# fmt: off
SDXL = {"text_encoder": "open_clip_vit_bigg14_f16.ckpt", "clip_encoder": "clip_vit_l14_f16.ckpt",
        "autoencoder": "sdxl_vae_v1.0_f16.ckpt"}
# Built into the app (ModelZoo.swift): known without any registry.
BUILTIN_MODELS: Mapping[str, Spec] = {s["file"]: s for s in (
    _spec("SDXL Base (v1.0)", "sd_xl_base_1.0_f16.ckpt", "sdxl_base_v0.9", **SDXL),
    _spec("SDXL Refiner (v1.0)", "sd_xl_refiner_1.0_f16.ckpt", "sdxl_refiner_v1.0", **SDXL),
    _spec("SDXL Refiner v1.0 (8-bit)", "sd_xl_refiner_1.0_q6p_q8p.ckpt", "sdxl_refiner_v1.0",
          **SDXL),
    _spec("Stable Diffusion v1.5", "sd_v1.5_f16.ckpt", "v1"),
)}
# Community models the shipped recipes use, as the app registers them in custom.json.
COMMUNITY_MODELS: Mapping[str, Spec] = {s["file"]: s for s in (
    _spec("Juggernaut XL v9 (8-bit)", "juggernaut_xl_v9_q6p_q8p.ckpt", "sdxl_base_v0.9",
          prefix="", upcast_attention=False, default_scale=16, modifier="none",
          text_encoder="juggernaut_xl_v9_open_clip_vit_bigg14_f16.ckpt",
          clip_encoder="juggernaut_xl_v9_clip_vit_l14_f16.ckpt",
          autoencoder="sdxl_vae_v1.0_f16.ckpt"),
    _spec("Juggernaut Reborn (8-bit)", "juggernaut_reborn_q6p_q8p.ckpt", "v1", prefix="",
          upcast_attention=False, default_scale=12, modifier="none",
          text_encoder="juggernaut_reborn_clip_vit_l14_f16.ckpt"),
)}
BUILTIN_CONTROLNETS: Mapping[str, Spec] = {s["file"]: s for s in (
    _spec("Tile (SD v1.x, ControlNet 1.1)", "controlnet_tile_1.x_v1.1_f16.ckpt", "v1",
          modifier="tile", type="controlnet", global_average_pooling=False),
)}
COMMUNITY_CONTROLNETS: Mapping[str, Spec] = {s["file"]: s for s in (
    # no modifier: a union model, used only with an inputOverride
    _spec("Xinsir Union ProMax (SDXL, ControlNet)",
          "controlnet_xinsir_union_promax_sdxl_1.0_f16.ckpt", "sdxl_base_v0.9",
          type="controlnetunion", global_average_pooling=False, transformer_blocks=[]),
)}
BUILTIN_LORAS: Mapping[str, Spec] = {s["file"]: s for s in (
    _spec("TCD Stable Diffusion v1.5", "tcd_sd_v1.5_lora_f16.ckpt", "v1", prefix="",
          is_consistency_model=True),
    _spec("TCD SDXL Base (1.0)", "tcd_sd_xl_base_1.0_lora_f16.ckpt", "sdxl_base_v0.9",
          prefix="", is_consistency_model=True),
)}
# The Creative Upscale script's LoRAs besides TCD (community-models; SD 1.5 LoRAs, as the
# script uses them with an SD 1.5 model).
COMMUNITY_LORAS: Mapping[str, Spec] = {s["file"]: s for s in (
    _spec("Add More Details (Detail Enhancer / Tweaker)",
          "add_more_details__detail_enhancer___tweaker__lora_f16.ckpt", "v1", prefix=""),
    _spec("SDXL Render v2.0", "sdxl_render_v2.0_lora_f16.ckpt", "v1", prefix=""),
)}
SDXL_FAMILY = {"sdxl_base_v0.9", "sdxl_refiner_v1.0", "ssd_1b"}  # may refine one another
DT_UPSCALERS: Mapping[str, int] = {  # built-in upscaler files → native factor
    "realesrgan_x2plus_f16.ckpt": 2, "realesrgan_x4plus_f16.ckpt": 4,
    "realesrgan_x4plus_anime_6b_f16.ckpt": 4, "esrgan_4x_universal_upscaler_v2_sharp_f16.ckpt": 4,
    "remacri_4x_f16.ckpt": 4, "4x_ultrasharp_f16.ckpt": 4,
}
INPUT_OVERRIDES = {
    "", "custom", "depth", "canny", "scribble", "pose", "normal bae", "color", "lineart",
    "softedge", "segmentation", "inpaint", "instruct pix2pix", "shuffle", "mlsd", "tile", "blur",
    "low quality", "gray",
}
NEEDS_INPUT_IMAGE = {"tile", "blur", "gray", "low quality"}  # dropped on txt2img
FACE_RESTORATION_FILES = ("restoreformer_v1.0_f16.ckpt", "parsenet_v1.0_f16.ckpt")

# The registry files and the keys the app needs in each entry (Swift decodes the rest as
# optional): an entry without one of these, or with one of the wrong type, is skipped.
REGISTRIES: Mapping[str, tuple[str, Mapping[str, type]]] = {
    "model": ("custom.json", {"name": str, "file": str, "prefix": str, "version": str,
                              "upcast_attention": bool, "default_scale": int}),
    "controlnet": ("custom_controlnet.json", {"name": str, "file": str, "version": str,
                                              "type": str, "global_average_pooling": bool}),
    "lora": ("custom_lora.json", {"name": str, "file": str, "prefix": str, "version": str}),
}
# fmt: on
BUILTIN: Mapping[str, Mapping[str, Spec]] = {
    "model": BUILTIN_MODELS,
    "controlnet": BUILTIN_CONTROLNETS,
    "lora": BUILTIN_LORAS,
}
KNOWN: Mapping[str, Mapping[str, Spec]] = {
    "model": {**BUILTIN_MODELS, **COMMUNITY_MODELS},
    "controlnet": {**BUILTIN_CONTROLNETS, **COMMUNITY_CONTROLNETS},
    "lora": {**BUILTIN_LORAS, **COMMUNITY_LORAS},
}


def upscale_factor(payload: Mapping[str, Any]) -> int | None:
    """How much Draw Things enlarges an answer with `upscaler` set: 2 or 4 when
    `upscaler_scale` forces it, else the upscaler's native factor (None: not known)."""
    name = payload.get("upscaler")
    if not name:
        return 1
    scale = payload.get("upscaler_scale", payload.get("upscaler_scale_factor"))
    if scale in (2, 4):
        return int(scale)
    return DT_UPSCALERS.get(str(name))


def model_files(spec: Spec) -> list[str]:
    """Every file a model needs, as the app counts it downloaded: the model, its autoencoder
    and text encoder (the version's defaults when its specification names none), and any
    CLIP, image or T5 encoder, diffusion mapping or latent upscaler it names."""
    v1 = spec.get("version") == "v1"
    files = [
        str(spec["file"]),
        str(spec.get("autoencoder") or "vae_ft_mse_840000_f16.ckpt"),
        str(
            spec.get("text_encoder")
            or ("clip_vit_l14_f16.ckpt" if v1 else "open_clip_vit_h14_f16.ckpt")
        ),
    ]
    for key in ("image_encoder", "clip_encoder", "t5_encoder", "diffusion_mapping"):
        if isinstance(spec.get(key), str) and spec[key]:
            files.append(spec[key])
    for extra in spec.get("additional_clip_encoders") or []:
        files.append(str(extra))
    for upscaler in spec.get("latents_upscalers") or []:
        if isinstance(upscaler, Mapping) and isinstance(upscaler.get("file"), str):
            files.append(upscaler["file"])
    return files


def control_files(spec: Spec) -> list[str]:
    """A ControlNet's file and the image encoder, autoencoder and preprocessor it names."""
    extra = (spec.get(k) for k in ("image_encoder", "autoencoder", "preprocessor"))
    return [str(spec["file"]), *(str(e) for e in extra if isinstance(e, str) and e)]


def entry_problem(kind: str, entry: object) -> str | None:
    """Why the app would skip this registry entry (a required key missing or mistyped)."""
    if not isinstance(entry, Mapping):
        return "not a JSON object"
    for key, want in REGISTRIES[kind][1].items():
        value = entry.get(key)
        if value is None:
            return f'it has no "{key}"'
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            return f'its "{key}" is {json.dumps(value)}, not a {_type_name(want)}'
    return None


def _type_name(want: type) -> str:
    names: dict[type, str] = {str: "string", bool: "true or false", int: "whole number"}
    return names.get(want, "value")


@dataclass
class Registry:
    """What the app knows of each kind: its built-ins, then every decodable entry of its
    registry files in the models folders (a later entry for a file replaces the built-in).
    `skipped`: file → why the app cannot read the entry that names it."""

    specs: dict[str, dict[str, Spec]] = field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # registry files that are not JSON

    @classmethod
    def read(cls, folders: Sequence[Path]) -> Registry:
        found = cls({k: dict(v) for k, v in BUILTIN.items()}, {k: {} for k in BUILTIN})
        for kind, (name, _keys) in REGISTRIES.items():
            for folder in folders:
                found._read_file(kind, folder / name)
        return found

    def _read_file(self, kind: str, path: Path) -> None:
        try:
            entries = json.loads(path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.unreadable.append(f"{path} ({exc})")
            return
        for entry in entries if isinstance(entries, list) else []:
            why = entry_problem(kind, entry)
            named = entry.get("file") if isinstance(entry, Mapping) else None
            if why is None:
                self.specs[kind][entry["file"]] = entry
            elif isinstance(named, str):
                self.skipped[kind][named] = f"its entry in {path.name} cannot be read: {why}"

    def find(self, kind: str, name: str) -> Spec | None:
        """The specification of a file, or of a display name (models)."""
        specs = self.specs.get(kind, {})
        if name in specs:
            return specs[name]
        return next((s for s in specs.values() if s.get("name") == name), None)
