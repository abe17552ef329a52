"""AUTOMATIC1111 1.10's API (with the ControlNet extension) as its source describes it
(docs/servers.md), for the tests.

Unknown keys are ignored. A checkpoint override that is not an exact alias, an img2img
upscaler it does not have, an unknown sampler or scheduler, and a ControlNet unit whose model
it cannot find are all dropped silently with HTTP 200 — each drop is written to the request's
record for a test to see. A refiner or hi-res upscaler it cannot find, an extras upscaler it
does not have and an image it cannot decode are HTTP 500 with the text in `errors`. img2img
at denoising strength 0 starts from σ_max and answers a picture that no longer resembles its
input. `info` is a JSON string saying what really ran.
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

from tests.fake_images import Pictures, image_size

SHA = {
    "sd_xl_base_1.0.safetensors":
        "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
    "sd_xl_refiner_1.0.safetensors":
        "7440042bbdc8a24813002c09b6b69b64dc90fded4472613437b7f55f9b7d9c5f",
    "SDXL/juggernautXL_v9.safetensors":
        "c9e3e68f89b8e38689e1097d4be4573cf308de4e3fd044c64ca697bdb4aa8bca",
    "v1-5-pruned-emaonly.safetensors":
        "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
}  # fmt: skip
UPSCALERS = ["None", "Lanczos", "Nearest", "4x-UltraSharp", "R-ESRGAN 4x+", "ESRGAN_4x",
             "LDSR", "SwinIR 4x"]  # fmt: skip
LATENT = ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
          "Latent (nearest)", "Latent (nearest-exact)"]  # fmt: skip
SAMPLERS = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a",
            "DPM++ 3M SDE", "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast",
            "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM"]  # fmt: skip
SCHEDULERS = [("automatic", "Automatic", []), ("uniform", "Uniform", []),
              ("karras", "Karras", []), ("exponential", "Exponential", []),
              ("polyexponential", "Polyexponential", []),
              ("sgm_uniform", "SGM Uniform", ["SGMUniform"]), ("kl_optimal", "KL Optimal", []),
              ("align_your_steps", "Align Your Steps", []), ("simple", "Simple", []),
              ("normal", "Normal", []), ("ddim", "DDIM", []), ("beta", "Beta", [])]  # fmt: skip
SCRIPTS = {
    "txt2img": ["prompt matrix", "prompts from file or textbox", "x/y/z plot", "controlnet",
                "refiner", "seed", "sampler", "extra options", "hypertile"],
    "img2img": ["img2img alternative test", "loopback", "outpainting mk2",
                "poor man's outpainting", "prompt matrix", "prompts from file or textbox",
                "sd upscale", "x/y/z plot", "controlnet", "refiner", "seed", "sampler"],
}  # fmt: skip
CONTROLNET_MODELS = ["ttplanetSDXLControlnet_v20Fp16 [c8f29e1e]",
                     "control_v11f1e_sd15_tile [a371b31b]"]  # fmt: skip
CONTROLNET_MODULES = ["none", "tile_resample", "tile_colorfix", "tile_colorfix+sharp", "canny",
                      "depth_midas", "lineart_realistic", "openpose"]  # fmt: skip
# Request fields with a type pydantic checks (and coerces, as pydantic v1 does).
TYPES = {
    "int": ["steps", "width", "height", "seed", "batch_size", "n_iter", "hr_resize_x",
            "hr_resize_y", "resize_mode", "hr_second_pass_steps", "upscaling_resize_w",
            "upscaling_resize_h"],
    "float": ["cfg_scale", "denoising_strength", "hr_scale", "refiner_switch_at",
              "upscaling_resize"],
    "bool": ["enable_hr", "restore_faces", "send_images", "save_images", "include_init_images",
             "override_settings_restore_afterwards", "upscaling_crop"],
    "dict": ["override_settings", "alwayson_scripts"],
    "list": ["init_images", "script_args", "styles"],
}  # fmt: skip


@dataclass
class Checkpoint:
    name: str  # path under models/Stable-diffusion, with extension
    sha256: str

    @property
    def short(self) -> str:
        return self.sha256[:10]

    @property
    def stem(self) -> str:  # A1111's name_for_extra
        return posixpath.splitext(posixpath.basename(self.name))[0]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short}]"

    def aliases(self) -> set[str]:
        model_name = posixpath.splitext(self.name)[0].replace("/", "_")
        return {self.sha256[:8], model_name, self.title, self.name, self.stem,
                f"{self.name} [{self.sha256[:8]}]", self.short, self.sha256,
                f"{self.stem} [{self.short}]"}  # fmt: skip

    def listing(self) -> dict[str, Any]:
        model_name = posixpath.splitext(self.name)[0].replace("/", "_")
        return {"title": self.title, "model_name": model_name, "hash": self.short,
                "sha256": self.sha256, "filename": f"/sd/models/Stable-diffusion/{self.name}",
                "config": None}  # fmt: skip


class Failure(Exception):
    """An error answer: (status, body)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def server_error(cls: str, message: str) -> Failure:
    return Failure(500, {"error": cls, "detail": "", "body": "", "errors": message})


def http_error(status: int, detail: str) -> Failure:
    return Failure(status, {"error": "HTTPException", "detail": detail, "body": "",
                            "errors": f"{status}: {detail}"})  # fmt: skip


@dataclass
class A1111App:
    checkpoints: list[Checkpoint] = field(
        default_factory=lambda: [Checkpoint(n, s) for n, s in SHA.items()]
    )
    upscalers: list[str] = field(default_factory=lambda: list(UPSCALERS))
    controlnet_models: list[str] = field(default_factory=lambda: list(CONTROLNET_MODELS))
    controlnet: bool = True  # the extension is installed
    auth: tuple[str, str] | None = None
    loaded: str = "sd_xl_base_1.0.safetensors"  # the checkpoint in memory

    def checkpoint(self, alias: str) -> Checkpoint | None:
        return next((c for c in self.checkpoints if alias in c.aliases()), None)

    def closest(self, name: str) -> Checkpoint | None:
        """The refiner's lookup: an exact alias, else the shortest title containing it."""
        exact = self.checkpoint(name)
        found = sorted((c for c in self.checkpoints if name in c.title), key=lambda c: len(c.title))
        return exact or (found[0] if found else None)

    def get(self, path: str) -> Any:
        """The list endpoints; None: 404."""
        current = next(c for c in self.checkpoints if c.name == self.loaded)
        routes: dict[str, Any] = {
            "/sdapi/v1/options": {"sd_model_checkpoint": current.title, "samples_format": "png",
                                  "sd_checkpoints_limit": 1, "upscaler_for_img2img": None},
            "/sdapi/v1/sd-models": [c.listing() for c in self.checkpoints],
            "/sdapi/v1/upscalers": [{"name": n, "model_name": None, "model_path": None,
                                     "model_url": None, "scale": 4} for n in self.upscalers],
            "/sdapi/v1/samplers": [{"name": n, "aliases": [f"k_{n.lower()}"], "options": {}}
                                   for n in SAMPLERS],
            "/sdapi/v1/schedulers": [{"name": n, "label": lab, "aliases": al or None,
                                      "default_rho": -1, "need_inner_model": False}
                                     for n, lab, al in SCHEDULERS],
            "/sdapi/v1/scripts": {k: [s for s in v if self.controlnet or s != "controlnet"]
                                  for k, v in SCRIPTS.items()},
            "/sdapi/v1/progress": {"progress": 0.0, "eta_relative": 0.0, "state": {},
                                   "current_image": None, "textinfo": None},
        }  # fmt: skip
        if self.controlnet:
            routes["/controlnet/model_list"] = {"model_list": self.controlnet_models}
            routes["/controlnet/module_list"] = {"module_list": CONTROLNET_MODULES}
        return routes.get(path)


def coerce(body: dict[str, Any]) -> dict[str, Any]:
    """pydantic v1's validation of the typed fields: coerced, or a 422 in FastAPI's shape."""
    out = dict(body)
    errors = []
    for kind, names in TYPES.items():
        for name in names:
            value = body.get(name)
            if value is None:
                out.pop(name, None)
                continue
            try:
                out[name] = _coerce(kind, value)
            except (TypeError, ValueError):
                errors.append({"loc": ["body", name], "msg": f"value is not a valid {kind}",
                               "type": f"type_error.{kind}"})  # fmt: skip
    if errors:
        raise Failure(422, {"detail": errors})
    return out


def _coerce(kind: str, value: Any) -> Any:
    if kind == "int":
        if isinstance(value, str | int | float):
            return int(value)
    elif kind == "float":
        if isinstance(value, str | int | float):
            return float(value)
    elif kind == "bool":
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
    elif (kind, type(value)) in (("dict", dict), ("list", list)):
        return value
    raise TypeError(kind)


def decode_image(text: Any) -> bytes:
    if isinstance(text, str) and text.startswith("data:image/"):
        text = text.split(";", 1)[1].split(",", 1)[1]
    try:
        data = base64.b64decode(str(text), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise http_error(500, "Invalid encoded image") from exc
    if image_size(data) is None:
        raise http_error(500, "Invalid encoded image")
    return data


def sampler_and_scheduler(sampler: str | None, scheduler: str | None) -> tuple[str, str]:
    """1.9+: a scheduler's label at the end of the sampler name is split off; an unknown
    sampler becomes the first one and an unknown scheduler Automatic."""
    by_name = {n: lab for n, lab, _ in SCHEDULERS} | {lab: lab for _, lab, _ in SCHEDULERS}
    found = by_name.get(scheduler or "", "Automatic")
    name = sampler or SAMPLERS[0]
    for _, label, aliases in SCHEDULERS:
        for option in (label, *aliases):
            if name.endswith(" " + option):
                found, name = label, name[: -(len(option) + 1)]
                break
    return (name if name in SAMPLERS else SAMPLERS[0]), found


def run_job(
    app: A1111App, pictures: Pictures, path: str, raw: bytes
) -> tuple[Any, list[bytes], dict[str, Any], list[str]]:
    """txt2img / img2img / extra-single-image: (answer body, images, applied, dropped)."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise Failure(422, {"detail": [{"loc": ["body", 0], "msg": "Expecting value",
                                        "type": "value_error.jsondecode"}]}) from exc  # fmt: skip
    if not isinstance(body, dict):
        raise Failure(422, {"detail": [{"loc": ["body"], "msg": "value is not a valid dict",
                                        "type": "type_error.dict"}]})  # fmt: skip
    req = coerce(body)
    if path == "extra-single-image":
        return _extras(app, pictures, req)
    return _generation(app, pictures, path, req, body)


def _extras(
    app: A1111App, pictures: Pictures, req: dict[str, Any]
) -> tuple[Any, list[bytes], dict[str, Any], list[str]]:
    image = decode_image(req.get("image", ""))
    width, height = image_size(image) or (0, 0)
    upscaler = str(req.get("upscaler_1", "None"))
    for name in (upscaler, str(req.get("upscaler_2", "None"))):
        if name != "None" and name not in app.upscalers:
            raise server_error("AssertionError", f"could not find upscaler named {name}")
    if upscaler == "None":
        size = (width, height)
    elif req.get("resize_mode", 0) == 1:
        size = (req.get("upscaling_resize_w", 512), req.get("upscaling_resize_h", 512))
    else:
        scale = req.get("upscaling_resize", 2.0)
        size = (int(width * scale), int(height * scale))
    out = pictures.resized(image, *size)
    applied = {"upscaler": upscaler, "size": list(size)}
    answer = {"image": base64.b64encode(out).decode(), "html_info": "<p>Postprocess upscale</p>"}
    return answer, [out], applied, []


def _scripts_check(app: A1111App, path: str, req: dict[str, Any]) -> dict[str, Any]:
    """Scripts named must be installed (422 otherwise); the alwayson ones, by lower name."""
    installed = set(app.get("/sdapi/v1/scripts")[path])
    script = req.get("script_name")
    if script and str(script).lower() not in installed:
        raise http_error(422, f"Script '{script}' not found")
    always = {str(k).lower(): v for k, v in (req.get("alwayson_scripts") or {}).items()}
    for name in always:
        if name not in installed:
            raise http_error(422, f"Script '{name}' not found")
    return always


def find_controlnet(app: A1111App, search: Any) -> str | None:
    """The extension's lookup: exact, else the lower-case name without hash, else the
    shortest name containing the text."""
    if not isinstance(search, str) or not search:
        return None
    if search in app.controlnet_models:
        return search
    names = {m.rsplit(" [", 1)[0].lower(): m for m in app.controlnet_models}
    text = search.lower()
    if text in names:
        return names[text]
    applicable = sorted((n for n in names if text in n), key=len)
    return names[applicable[0]] if applicable else None


def _controlnet(
    app: A1111App, spec: Any, extra: dict[str, Any], dropped: list[str], tiled: bool
) -> tuple[list[str], int]:
    """(models that ran, detected maps appended). One unit it cannot load raises inside the
    script, which A1111 only logs: then no unit runs at all."""
    units = spec.get("args") if isinstance(spec, dict) else None
    enabled = [u for u in units or [] if isinstance(u, dict) and u.get("enabled", False)]
    for i, unit in enumerate(enabled):  # written before any model loads
        extra[f"ControlNet {i}"] = (
            f"Module: {unit.get('module', 'none')}, Model: {unit.get('model')}"
        )
    models = []
    for unit in enabled:
        model = find_controlnet(app, unit.get("model"))
        if model is None or unit.get("module", "none") not in CONTROLNET_MODULES:
            dropped.append(f"controlnet: model {unit.get('model')!r} / module "
                           f"{unit.get('module')!r} not found, ControlNet skipped")  # fmt: skip
            return [], 0
        models.append(model)
    maps = 0 if tiled else sum(1 for u in enabled if u.get("save_detected_map", True))
    return models, maps


def _generation(
    app: A1111App, pictures: Pictures, path: str, req: dict[str, Any], body: dict[str, Any]
) -> tuple[Any, list[bytes], dict[str, Any], list[str]]:
    dropped: list[str] = []
    init = None
    if path == "img2img":
        if not req.get("init_images"):
            raise http_error(404, "Init image not found")
        init = decode_image(req["init_images"][0])
    always = _scripts_check(app, path, req)
    override = req.get("override_settings") or {}
    before = app.loaded
    asked = override.get("sd_model_checkpoint")
    if asked is not None:
        found = app.checkpoint(str(asked))
        if found is None:
            dropped.append(f"sd_model_checkpoint {asked!r}: not an exact alias, {app.loaded} kept")
        else:
            app.loaded = found.name
    model = next(c for c in app.checkpoints if c.name == app.loaded)
    refiner = req.get("refiner_checkpoint")
    ref = None
    if refiner not in (None, "", "None", "none"):
        ref = app.closest(str(refiner))
        if ref is None:
            app.loaded = before
            raise server_error("Exception", f"Could not find checkpoint with name {refiner}")
    wanted = req.get("sampler_name") or req.get("sampler_index") or "Euler"
    sampler, scheduler = sampler_and_scheduler(wanted, req.get("scheduler"))
    if not str(wanted).startswith(sampler):
        dropped.append(f"sampler {wanted!r}: unknown, {sampler} used")
    steps, width, height = req.get("steps", 50), req.get("width", 512), req.get("height", 512)
    extra: dict[str, Any] = {"Schedule type": scheduler}
    size = (width, height)
    if path == "txt2img" and req.get("enable_hr"):
        size = _hires(app, req, extra)
    switch = req.get("refiner_switch_at")
    if ref is not None and switch is not None and 0 < switch < 1:
        extra["Refiner"], extra["Refiner switch at"] = f"{ref.stem} [{ref.short}]", switch
    script = str(req.get("script_name") or "").lower()
    controlnet, maps = _controlnet(
        app, always.get("controlnet"), extra, dropped, script == "sd upscale"
    )
    strength = req.get("denoising_strength", 0.75)
    seed = req.get("seed", -1)
    seed = seed if seed != -1 else 123456789
    count = req.get("batch_size", 1) * req.get("n_iter", 1)
    applied: dict[str, Any] = {
        "model": model.name, "refiner": ref.name if ref and "Refiner" in extra else None,
        "sampler": sampler, "scheduler": scheduler, "controlnet": controlnet,
    }  # fmt: skip
    if init is not None:
        images = [_img2img(app, pictures, req, init, override, applied, dropped, seed)] * count
    else:
        images = [pictures.render(f"seed:{seed + k}", *size) for k in range(count)]
    size = image_size(images[0]) or size
    applied["size"] = list(size)
    maps_out = [pictures.render(f"map:{seed}:{k}", *size) for k in range(maps)]
    info = {
        "prompt": req.get("prompt", ""), "negative_prompt": req.get("negative_prompt", ""),
        "seed": seed, "all_seeds": [seed + k for k in range(count)], "subseed": -1,
        "width": size[0], "height": size[1], "sampler_name": sampler,
        "cfg_scale": req.get("cfg_scale", 7.0), "steps": steps,
        "batch_size": req.get("batch_size", 1),
        "restore_faces": False, "sd_model_name": model.stem, "sd_model_hash": model.short,
        "sd_vae_name": None, "sd_vae_hash": None, "denoising_strength": strength,
        "extra_generation_params": extra, "index_of_first_image": 0, "infotexts": [""] * count,
        "styles": [], "job_timestamp": "20261124120000", "clip_skip": 1,
        "version": "v1.10.1",
    }  # fmt: skip
    if req.get("override_settings_restore_afterwards", True):
        app.loaded = before
    echo = {k: v for k, v in body.items() if k not in ("init_images", "mask")}
    answer = {
        "images": [base64.b64encode(i).decode() for i in [*images, *maps_out]],
        "parameters": echo, "info": json.dumps(info),
    }  # fmt: skip
    return answer, images, applied, dropped


def _hires(app: A1111App, req: dict[str, Any], extra: dict[str, Any]) -> tuple[int, int]:
    upscaler = req.get("hr_upscaler")
    if upscaler is not None and upscaler not in LATENT and upscaler not in app.upscalers:
        raise server_error("Exception", f"could not find upscaler named {upscaler}")
    extra["Hires upscaler"] = upscaler or "Latent"
    width, height = req.get("width", 512), req.get("height", 512)
    rx, ry = req.get("hr_resize_x", 0), req.get("hr_resize_y", 0)
    if not rx and not ry:
        scale = req.get("hr_scale", 2.0)
        extra["Hires upscale"] = scale
        return int(width * scale), int(height * scale)
    extra["Hires resize"] = f"{rx}x{ry}"
    if not ry:
        return rx, rx * height // width
    if not rx:
        return ry * width // height, ry
    return rx, ry


def _img2img(
    app: A1111App, pictures: Pictures, req: dict[str, Any], init: bytes, override: dict[str, Any],
    applied: dict[str, Any], dropped: list[str], seed: int,
) -> bytes:  # fmt: skip
    width, height = req.get("width", 512), req.get("height", 512)
    if str(req.get("script_name") or "").lower() == "sd upscale":
        args = req.get("script_args") or ["", 64, "None", 2.0]
        names = [u.lower() for u in app.upscalers]
        chosen = args[2]
        if isinstance(chosen, str) and chosen.lower() not in names:
            raise server_error("ValueError", f"'{chosen.lower()}' is not in list")
        applied["upscaler"] = chosen
        iw, ih = image_size(init) or (width, height)
        return pictures.resized(init, int(iw * float(args[3])), int(ih * float(args[3])))
    upscaler = override.get("upscaler_for_img2img")
    if upscaler is not None and upscaler not in app.upscalers:
        dropped.append(f"upscaler_for_img2img {upscaler!r}: not installed, Lanczos used")
        upscaler = "None"
    applied["upscaler"] = upscaler
    steps = req.get("steps", 50)
    t_enc = int(min(req.get("denoising_strength", 0.75), 0.999) * steps)
    if steps - t_enc - 1 <= 0:  # sampling starts at sigma_max: noise, denoised in t_enc steps
        applied["destroyed"] = True
        return pictures.render(f"noise:{seed}", width, height)
    return pictures.resized(init, width, height)
