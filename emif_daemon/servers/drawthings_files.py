"""Draw Things' files the shipped recipes rely on: models and what they need, upscalers and
their factors, ControlNets and their model versions (docs/servers.md#files-on-draw-things).

What the daemon can know without asking the app; anything else it leaves to the app's answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Where the sandboxed app keeps its files (an external folder chosen in the app comes first).
DRAW_THINGS_MODELS = "~/Library/Containers/com.liuliu.draw-things/Data/Documents/Models"

# fmt: off
# model file → (display name, version, companion files that must be downloaded too)
SDXL_FILES = ("open_clip_vit_bigg14_f16.ckpt", "clip_vit_l14_f16.ckpt", "sdxl_vae_v1.0_f16.ckpt")
DT_MODELS: Mapping[str, tuple[str, str, tuple[str, ...]]] = {
    "sd_xl_base_1.0_f16.ckpt": ("SDXL Base (v1.0)", "sdxl_base_v0.9", SDXL_FILES),
    "sd_xl_refiner_1.0_f16.ckpt": ("SDXL Refiner (v1.0)", "sdxl_refiner_v1.0", SDXL_FILES),
    "juggernaut_xl_v9_q6p_q8p.ckpt": ("Juggernaut XL v9 (8-bit)", "sdxl_base_v0.9", (
        "juggernaut_xl_v9_open_clip_vit_bigg14_f16.ckpt",
        "juggernaut_xl_v9_clip_vit_l14_f16.ckpt", "sdxl_vae_v1.0_f16.ckpt")),
}
SDXL_FAMILY = {"sdxl_base_v0.9", "sdxl_refiner_v1.0", "ssd_1b"}  # may refine one another
DT_UPSCALERS: Mapping[str, int] = {  # built-in upscaler files → native factor
    "realesrgan_x2plus_f16.ckpt": 2, "realesrgan_x4plus_f16.ckpt": 4,
    "realesrgan_x4plus_anime_6b_f16.ckpt": 4, "esrgan_4x_universal_upscaler_v2_sharp_f16.ckpt": 4,
    "remacri_4x_f16.ckpt": 4, "4x_ultrasharp_f16.ckpt": 4,
}
# ControlNet file → (version, its own modifier or "" for union models that need inputOverride)
DT_CONTROLNETS: Mapping[str, tuple[str, str]] = {
    "controlnet_tile_1.x_v1.1_f16.ckpt": ("v1", "tile"),
    "controlnet_xinsir_union_promax_sdxl_1.0_f16.ckpt": ("sdxl_base_v0.9", ""),
}
INPUT_OVERRIDES = {
    "", "custom", "depth", "canny", "scribble", "pose", "normal bae", "color", "lineart",
    "softedge", "segmentation", "inpaint", "instruct pix2pix", "shuffle", "mlsd", "tile", "blur",
    "low quality", "gray",
}
NEEDS_INPUT_IMAGE = {"tile", "blur", "gray", "low quality"}  # dropped on txt2img
FACE_RESTORATION_FILES = ("restoreformer_v1.0_f16.ckpt", "parsenet_v1.0_f16.ckpt")
# fmt: on


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
