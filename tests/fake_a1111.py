"""AUTOMATIC1111 1.10's API (with the ControlNet extension) as a real v1.10.1 behaved when
the team ran it offline on CPU (its observation notes number every place where this server
differed; the numbers below are theirs), for the tests.

Unknown keys are ignored (and left out of `parameters`, which echoes the whole request model
with its defaults). A checkpoint override that is not an exact alias, an img2img upscaler it
does not have, an unknown sampler or scheduler, a ControlNet unit whose model it cannot find,
and an upscaler it lists without its weights (a plain Lanczos resize instead) are all dropped
silently with HTTP 200 — each drop is written to the request's record for a test to see. A
refiner or hi-res upscaler it cannot find, an extras upscaler it does not have, an unknown
ControlNet module, `null` on a typed field and an image it cannot decode are HTTP 500 with
the text in `errors`. img2img whose schedule starts at σ_max (steps 1, or strength 0 at
steps 1) answers a smooth smear, as one step from pure noise does. `info` is a JSON string
saying what really ran: `Refiner` only when the refiner swapped in, the first pass's size
under hi-res fix, `index_of_first_image` 1 when a saved batch puts its grid first.

Where this server still differs from the real one, on purpose (by the notes' numbers):
- #21 it listens on 127.0.0.1 only: tests never open a port to the network;
- #22 it answers as soon as it is started: the daemon's wait for `/sdapi/v1/options` is
  tested with a server that is off, then started;
- #13 `sd_checkpoint_hash` is the loaded base model's even while a refiner runs (a value
  only logged);
- #17 answers are gzip-compressed at level 1, not 9 (the same bytes once decoded; the tests
  spend less CPU);
- #2 whether the refiner swaps in is decided by the share of sampling steps, not by noise
  level: the same outcome for the step counts the tests use (none at steps 1, yes at 4).
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fake_images import Pictures, image_size, smeared

SHA = {
    "sd_xl_base_1.0.safetensors": (
        "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"
    ),
    "sd_xl_refiner_1.0.safetensors": (
        "7440042bbdc8a24813002c09b6b69b64dc90fded4472613437b7f55f9b7d9c5f"
    ),
    "SDXL/juggernautXL_v9.safetensors": (
        "c9e3e68f89b8e38689e1097d4be4573cf308de4e3fd044c64ca697bdb4aa8bca"
    ),
    "v1-5-pruned-emaonly.safetensors": (
        "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
    ),
}
GH = "https://github.com"
# The weights the test server has downloaded: real (empty) files, so a daemon on this machine
# finds them where `model_path` says, as it would beside a real server.
MODELS = Path(__file__).resolve().parent / "a1111_models"
# Listed upscaler → its model_path: None built in, a file once downloaded, else the URL it
# would be downloaded from (A1111 lists them all before their weights exist).
UPSCALERS: dict[str, str | None] = {
    "None": None,
    "Lanczos": None,
    "Nearest": None,
    "4x-UltraSharp": str(MODELS / "ESRGAN" / "4x-UltraSharp.pth"),
    "DAT x2": f"{GH}/zhengchen1999/DAT/releases/download/v0.1/DAT_x2.pth",
    "DAT x3": f"{GH}/zhengchen1999/DAT/releases/download/v0.1/DAT_x3.pth",
    "DAT x4": f"{GH}/zhengchen1999/DAT/releases/download/v0.1/DAT_x4.pth",
    "ESRGAN_4x": f"{GH}/cszn/KAIR/releases/download/v1.0/ESRGAN.pth",
    "LDSR": "https://heibox.uni-heidelberg.de/f/578df07c8fc04ffbadf3/?dl=1",
    "R-ESRGAN 4x+": f"{GH}/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
    "R-ESRGAN 4x+ Anime6B": (
        f"{GH}/xinntao/Real-ESRGAN/releases/download/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth"
    ),
    "ScuNET GAN": f"{GH}/cszn/KAIR/releases/download/v1.0/scunet_color_real_gan.pth",
    "ScuNET PSNR": f"{GH}/cszn/KAIR/releases/download/v1.0/scunet_color_real_psnr.pth",
    "SwinIR 4x": f"{GH}/JingyunLiang/SwinIR/releases/download/v0.0/"
    "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth",
}
SCALES = {"DAT x2": 2.0, "DAT x3": 3.0}
LATENT = [
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
]
SAMPLERS = [
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 2S a",
    "DPM++ 3M SDE",
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM fast",
    "DPM adaptive",
    "Restart",
    "DDIM",
    "DDIM CFG++",
    "PLMS",
    "UniPC",
    "LCM",
]
# A sampler's own scheduler, used (and written as "Schedule type") when none is asked for.
SAMPLER_SCHEDULER = {
    "DPM++ 2M": "karras",
    "DPM++ SDE": "karras",
    "DPM++ 2M SDE": "exponential",
    "DPM++ 2M SDE Heun": "exponential",
    "DPM++ 2S a": "karras",
    "DPM++ 3M SDE": "exponential",
    "DPM2": "karras",
    "DPM2 a": "karras",
    "Restart": "karras",
}
SCHEDULERS = [
    ("automatic", "Automatic", []),
    ("uniform", "Uniform", []),
    ("karras", "Karras", []),
    ("exponential", "Exponential", []),
    ("polyexponential", "Polyexponential", []),
    ("sgm_uniform", "SGM Uniform", ["SGMUniform"]),
    ("kl_optimal", "KL Optimal", []),
    ("align_your_steps", "Align Your Steps", []),
    ("simple", "Simple", []),
    ("normal", "Normal", []),
    ("ddim", "DDIM", []),
    ("beta", "Beta", []),
]
NEED_INNER_MODEL = {"uniform", "sgm_uniform", "simple", "normal", "ddim", "beta"}
SCRIPTS = {
    "txt2img": [
        "prompt matrix",
        "prompts from file or textbox",
        "x/y/z plot",
        "extra options",
        "Hypertile",
        "refiner",
        "sampler",
        "seed",
    ],
    "img2img": [
        "img2img alternative test",
        "loopback",
        "outpainting mk2",
        "poor man's outpainting",
        "prompt matrix",
        "prompts from file or textbox",
        "sd upscale",
        "x/y/z plot",
        "extra options",
        "Hypertile",
        "soft inpainting",
        "refiner",
        "sampler",
        "seed",
    ],
}
CONTROLNET_SCRIPTS = ["controlnet", "controlnet m2m"]
CONTROLNET_MODELS = [
    "ttplanetSDXLControlnet_v20Fp16 [c8f29e1e]",
    "control_v11f1e_sd15_tile [a371b31b]",
]
CONTROLNET_MODULES = [
    "none",
    "tile_resample",
    "tile_colorfix",
    "tile_colorfix+sharp",
    "canny",
    "depth_midas",
    "lineart_realistic",
    "openpose",
]
# The request models' fields with their defaults: `parameters` echoes them all, filled in.
COMMON: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "styles": None,
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "sampler_name": None,
    "scheduler": None,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 50,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "restore_faces": None,
    "tiling": None,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "eta": None,
    "denoising_strength": None,
    "s_min_uncond": None,
    "s_churn": None,
    "s_tmax": None,
    "s_tmin": None,
    "s_noise": None,
    "override_settings": None,
    "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None,
    "refiner_switch_at": None,
    "disable_extra_networks": False,
    "firstpass_image": None,
    "comments": None,
    "sampler_index": "Euler",
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
    "force_task_id": None,
    "infotext": None,
}
FIELDS = {
    "txt2img": {
        **COMMON,
        "enable_hr": False,
        "firstphase_width": 0,
        "firstphase_height": 0,
        "hr_scale": 2.0,
        "hr_upscaler": None,
        "hr_second_pass_steps": 0,
        "hr_resize_x": 0,
        "hr_resize_y": 0,
        "hr_checkpoint_name": None,
        "hr_sampler_name": None,
        "hr_scheduler": None,
        "hr_prompt": "",
        "hr_negative_prompt": "",
    },
    "img2img": {
        **COMMON,
        "init_images": None,
        "resize_mode": 0,
        "image_cfg_scale": None,
        "mask": None,
        "mask_blur_x": 4,
        "mask_blur_y": 4,
        "mask_blur": None,
        "mask_round": True,
        "inpainting_fill": 0,
        "inpaint_full_res": True,
        "inpaint_full_res_padding": 0,
        "inpainting_mask_invert": 0,
        "initial_noise_multiplier": None,
        "latent_mask": None,
        "include_init_images": False,
        "denoising_strength": 0.75,
    },
}
# Request fields with a type pydantic checks (and coerces, as pydantic v1 does).
TYPES = {
    "int": [
        "steps",
        "width",
        "height",
        "seed",
        "batch_size",
        "n_iter",
        "hr_resize_x",
        "hr_resize_y",
        "resize_mode",
        "hr_second_pass_steps",
        "upscaling_resize_w",
        "upscaling_resize_h",
    ],
    "float": [
        "cfg_scale",
        "denoising_strength",
        "hr_scale",
        "refiner_switch_at",
        "upscaling_resize",
    ],
    "bool": [
        "enable_hr",
        "restore_faces",
        "send_images",
        "save_images",
        "include_init_images",
        "override_settings_restore_afterwards",
        "upscaling_crop",
    ],
    "dict": ["override_settings", "alwayson_scripts"],
    "list": ["init_images", "script_args", "styles"],
}


@dataclass
class Checkpoint:
    name: str  # path under models/Stable-diffusion, with extension
    sha256: str
    hashed: bool = False  # A1111 hashes a checkpoint when it first loads it
    yaml: bool = False  # a config .yaml sits beside it

    @property
    def short(self) -> str:
        return self.sha256[:10]

    @property
    def stem(self) -> str:  # A1111's name_for_extra
        return posixpath.splitext(posixpath.basename(self.name))[0]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short}]" if self.hashed else self.name

    def aliases(self) -> set[str]:
        model_name = posixpath.splitext(self.name)[0].replace("/", "_")
        names = {
            self.sha256[:8],
            model_name,
            self.title,
            self.name,
            self.stem,
            f"{self.name} [{self.sha256[:8]}]",
        }
        if self.hashed:
            names |= {self.short, self.sha256, f"{self.stem} [{self.short}]"}
        return names

    def listing(self) -> dict[str, Any]:
        model_name = posixpath.splitext(self.name)[0].replace("/", "_")
        path = f"/sd/models/Stable-diffusion/{self.name}"
        return {
            "title": self.title,
            "model_name": model_name,
            "hash": self.short if self.hashed else None,
            "sha256": self.sha256 if self.hashed else None,
            "filename": path,
            "config": posixpath.splitext(path)[0] + ".yaml" if self.yaml else None,
        }


class Failure(Exception):
    """An error answer: (status, body)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def server_error(cls: str, message: str) -> Failure:
    return Failure(500, {"error": cls, "detail": "", "body": "", "errors": message})


def http_error(status: int, detail: str) -> Failure:
    """A1111's handler rebuilds an HTTPException's body with `errors` empty."""
    return Failure(status, {"error": "HTTPException", "detail": detail, "body": "", "errors": ""})


LOADED = "sd_xl_base_1.0.safetensors"


@dataclass
class A1111App:
    checkpoints: list[Checkpoint] = field(
        default_factory=lambda: [Checkpoint(n, s, hashed=n == LOADED) for n, s in SHA.items()]
    )
    upscalers: list[str] = field(default_factory=lambda: list(UPSCALERS))
    # model_path of each listed upscaler (None: built in; a URL: weights not downloaded)
    upscaler_paths: dict[str, str | None] = field(default_factory=lambda: dict(UPSCALERS))
    controlnet_models: list[str] = field(default_factory=lambda: list(CONTROLNET_MODELS))
    controlnet_loaded: set[str] = field(default_factory=set)  # stay usable from memory
    controlnet: bool = True  # the extension is installed
    auth: tuple[str, str] | None = None
    loaded: str = LOADED  # the checkpoint in memory
    option_checkpoint: str = ""  # options.sd_model_checkpoint: the last string sent

    def load(self, checkpoint: Checkpoint) -> None:
        checkpoint.hashed = True
        self.loaded = checkpoint.name

    def downloaded(self, upscaler: str) -> bool:
        path = self.upscaler_paths.get(upscaler)
        return not (path or "").startswith(("http://", "https://"))

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
        extension = CONTROLNET_SCRIPTS if self.controlnet else []
        routes: dict[str, Any] = {
            "/sdapi/v1/options": {
                "sd_model_checkpoint": self.option_checkpoint or current.title,
                "sd_checkpoint_hash": current.sha256,
                "samples_format": "png",
                "sd_checkpoints_limit": 1,
                "upscaler_for_img2img": None,
                "img2img_fix_steps": False,
                "hires_fix_refiner_pass": "second pass",
            },
            "/sdapi/v1/sd-models": [c.listing() for c in self.checkpoints],
            "/sdapi/v1/upscalers": [
                {
                    "name": n,
                    "model_name": _model_name(n),
                    "model_path": self.upscaler_paths.get(n),
                    "model_url": None,
                    "scale": SCALES.get(n, 4.0),
                }
                for n in self.upscalers
            ],
            "/sdapi/v1/samplers": [
                {
                    "name": n,
                    "aliases": [f"k_{n.lower()}"],
                    "options": (
                        {"scheduler": SAMPLER_SCHEDULER[n]} if n in SAMPLER_SCHEDULER else {}
                    ),
                }
                for n in SAMPLERS
            ],
            "/sdapi/v1/schedulers": [
                {
                    "name": n,
                    "label": lab,
                    "aliases": al or None,
                    "default_rho": -1.0,
                    "need_inner_model": n in NEED_INNER_MODEL,
                }
                for n, lab, al in SCHEDULERS
            ],
            "/sdapi/v1/scripts": {k: [*v, *extension] for k, v in SCRIPTS.items()},
            "/sdapi/v1/progress": {
                "progress": 0.0,
                "eta_relative": 0.0,
                "state": {},
                "current_image": None,
                "textinfo": None,
            },
        }
        if self.controlnet:
            routes["/controlnet/model_list"] = {"model_list": self.controlnet_models}
            routes["/controlnet/module_list"] = {"module_list": CONTROLNET_MODULES}
        return routes.get(path)


def _model_name(upscaler: str) -> str | None:
    return None if UPSCALERS.get(upscaler) is None else upscaler.split(" ", maxsplit=1)[0]


def coerce(body: dict[str, Any]) -> dict[str, Any]:
    """pydantic v1's validation of the typed fields: coerced, or a 422 in FastAPI's shape.
    `null` is a value, not the default: processing a typed field set to None raises (a 500)."""
    out = dict(body)
    errors = []
    for kind, names in TYPES.items():
        for name in names:
            if name in body and body[name] is None and kind in ("int", "float", "bool"):
                raise server_error(
                    "TypeError", "unsupported operand type(s) for //: 'NoneType' and 'int'"
                )
            value = body.get(name)
            if value is None:
                out.pop(name, None)
                continue
            try:
                out[name] = _coerce(kind, value)
            except (TypeError, ValueError):
                errors.append(
                    {
                        "loc": ["body", name],
                        "msg": f"value is not a valid {kind}",
                        "type": f"type_error.{kind}",
                    }
                )
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
    """1.9+: a scheduler's name or label at the end of the sampler name is split off; an
    unknown sampler becomes the first one and an unknown scheduler Automatic. Automatic
    means the sampler's own scheduler where it has one (DPM++ 2M: Karras): that is the
    scheduler that runs, and the one `Schedule type` names."""
    by_name = {n: lab for n, lab, _ in SCHEDULERS} | {lab: lab for _, lab, _ in SCHEDULERS}
    found = by_name.get(scheduler or "", "Automatic")
    name = sampler or SAMPLERS[0]
    for key, label, aliases in SCHEDULERS:
        for option in (label, key, *aliases):
            if name.endswith(" " + option):
                found, name = label, name[: -(len(option) + 1)]
                break
    name = name if name in SAMPLERS else SAMPLERS[0]
    if found == "Automatic" and name in SAMPLER_SCHEDULER:
        found = by_name[SAMPLER_SCHEDULER[name]]
    return name, found


def run_job(
    app: A1111App, pictures: Pictures, path: str, raw: bytes
) -> tuple[Any, list[bytes], dict[str, Any], list[str]]:
    """txt2img / img2img / extra-single-image: (answer body, images, applied, dropped)."""
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        ctx = {
            "msg": exc.msg,
            "doc": exc.doc,
            "pos": exc.pos,
            "lineno": exc.lineno,
            "colno": exc.colno,
        }
        raise Failure(
            422,
            {
                "detail": [
                    {
                        "loc": ["body", exc.pos],
                        "msg": str(exc),
                        "type": "value_error.jsondecode",
                        "ctx": ctx,
                    }
                ]
            },
        ) from exc
    if not isinstance(body, dict):
        raise Failure(
            422,
            {
                "detail": [
                    {"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}
                ]
            },
        )
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
    dropped: list[str] = []
    if upscaler == "None":
        size, html = (width, height), ""
    elif req.get("resize_mode", 0) == 1:
        size = (req.get("upscaling_resize_w", 512), req.get("upscaling_resize_h", 512))
        html = f"Postprocess upscale to: {size[0]}x{size[1]}, "
    else:
        scale = req.get("upscaling_resize", 2.0)
        size, html = (int(width * scale), int(height * scale)), f"Postprocess upscale by: {scale}, "
    ran = _weights_or_lanczos(app, upscaler, dropped)
    out = pictures.resized(image, *size)
    applied = {"upscaler": ran, "size": list(size)}
    info = f"<p>{html}Postprocess upscaler: {upscaler}</p>" if upscaler != "None" else ""
    answer = {"image": base64.b64encode(out).decode(), "html_info": info}
    return answer, [out], applied, dropped


def _weights_or_lanczos(app: A1111App, upscaler: str, dropped: list[str]) -> str:
    """The upscaler that really runs: one listed without its weights tries to download them,
    fails offline, and leaves a plain Lanczos resize, answered with HTTP 200."""
    if upscaler in ("None", "Lanczos", "Nearest") or app.downloaded(upscaler):
        return upscaler
    dropped.append(f"upscaler {upscaler!r}: weights not downloaded, a plain Lanczos resize")
    return "Lanczos"


def _scripts_check(app: A1111App, path: str, req: dict[str, Any]) -> dict[str, Any]:
    """Scripts named must be installed (422 otherwise); the alwayson ones, by lower name."""
    installed = {s.lower() for s in app.get("/sdapi/v1/scripts")[path]}
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
    shortest name containing the text. The list is read again each time; a model loaded
    before stays usable from memory."""
    if not isinstance(search, str) or not search or search == "None":
        return None
    models = [*app.controlnet_models, *sorted(app.controlnet_loaded - set(app.controlnet_models))]
    if search in models:
        return search
    names = {m.rsplit(" [", 1)[0].lower(): m for m in models}
    text = search.lower()
    if text in names:
        return names[text]
    applicable = sorted((n for n in names if text in n), key=len)
    return names[applicable[0]] if applicable else None


def _controlnet(
    app: A1111App, spec: Any, extra: dict[str, Any], dropped: list[str], tiled: bool
) -> tuple[list[str], int]:
    """(models that ran, detected maps appended). Every unit is validated first: an unknown
    module is a 500. One unit whose model it cannot load raises inside the script, which
    A1111 only logs: then no unit runs at all, yet the map of a unit with model "None" and a
    preprocessor is appended all the same."""
    units = [
        u
        for u in (spec.get("args") if isinstance(spec, dict) else None) or []
        if isinstance(u, dict)
    ]
    for unit in units:
        module = unit.get("module", "none")
        if module not in CONTROLNET_MODULES:
            raise server_error(
                "ValidationError",
                "1 validation error for ControlNetUnit\nmodule"
                f"\n  module({module}) not found in supported modules. "
                "(type=value_error)",
            )
    enabled = [u for u in units if u.get("enabled", False)]
    for i, unit in enumerate(enabled):  # written before any model loads
        extra[f"ControlNet {i}"] = (
            f"Module: {unit.get('module', 'none')}, Model: {unit.get('model')}"
        )
    saving = [u for u in enabled if u.get("save_detected_map", True)]
    preprocessed = sum(1 for u in saving if u.get("module", "none") != "none")
    models = []
    for unit in enabled:
        model = find_controlnet(app, unit.get("model"))
        if model is None:
            dropped.append(f"controlnet: model {unit.get('model')!r} not found, ControlNet skipped")
            nameless = [u for u in saving if u.get("model") == "None"]
            return [], 0 if tiled else min(preprocessed, len(nameless))
        models.append(model)
    app.controlnet_loaded.update(models)
    return models, 0 if tiled else len(saving)


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
    restore = req.get("override_settings_restore_afterwards", True)
    if asked is not None:
        found = app.checkpoint(str(asked))
        if found is None:
            dropped.append(f"sd_model_checkpoint {asked!r}: not an exact alias, {app.loaded} kept")
        else:
            app.load(found)
        if not restore:  # the option keeps the string as sent
            app.option_checkpoint = str(asked)
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
    extra: dict[str, Any] = {} if scheduler == "Automatic" else {"Schedule type": scheduler}
    size = (width, height)
    hires = path == "txt2img" and bool(req.get("enable_hr"))
    if hires:
        size = _hires(app, req, extra, dropped)
    switch = req.get("refiner_switch_at")
    if ref is not None and switch is not None and _refiner_swaps_in(req, switch, hires):
        ref.hashed = True
        extra["Refiner"], extra["Refiner switch at"] = f"{ref.stem} [{ref.short}]", switch
    elif ref is not None:
        dropped.append(f"refiner {ref.name}: the switch at {switch} never came")
    script = str(req.get("script_name") or "").lower()
    controlnet, maps = _controlnet(
        app, always.get("controlnet"), extra, dropped, script == "sd upscale"
    )
    strength = req.get("denoising_strength", 0.75)
    seed = req.get("seed", -1)
    seed = seed if seed != -1 else 123456789
    count = req.get("batch_size", 1) * req.get("n_iter", 1)
    applied: dict[str, Any] = {
        "model": model.name,
        "refiner": ref.name if ref and "Refiner" in extra else None,
        "sampler": sampler,
        "scheduler": scheduler,
        "controlnet": controlnet,
    }
    if init is not None:
        images = [_img2img(app, pictures, req, init, override, applied, dropped, seed)] * count
    else:
        images = [pictures.render(f"seed:{seed + k}", *size) for k in range(count)]
    size = image_size(images[0]) or size
    applied["size"] = list(size)
    maps_out = [pictures.render(f"map:{seed}:{k}", *size) for k in range(maps)]
    # A saved batch comes with its grid, first: one row of the images side by side.
    grid = req.get("save_images") and count > 1 and not req.get("do_not_save_grid")
    grids = [pictures.render(f"grid:{seed}", size[0] * count, size[1])] if grid else []
    info = {
        "prompt": req.get("prompt", ""),
        "negative_prompt": req.get("negative_prompt", ""),
        "seed": seed,
        "all_seeds": [seed + k for k in range(count)],
        "subseed": -1,
        "width": width,
        "height": height,
        "sampler_name": sampler,  # hi-res: the first pass
        "cfg_scale": req.get("cfg_scale", 7.0),
        "steps": steps,
        "batch_size": req.get("batch_size", 1),
        "restore_faces": False,
        "sd_model_name": model.stem,
        "sd_model_hash": model.short,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "denoising_strength": strength,
        "extra_generation_params": extra,
        "index_of_first_image": len(grids),
        "infotexts": [""] * count,
        "styles": [],
        "job_timestamp": "20261124120000",
        "clip_skip": 1,
        "version": "v1.10.1",
    }
    if restore:
        app.loaded = before
    answer = {
        "images": [base64.b64encode(i).decode() for i in [*grids, *images, *maps_out]],
        "parameters": _parameters(path, body),
        "info": json.dumps(info),
    }
    return answer, images, applied, dropped


def _parameters(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The whole request model as A1111 echoes it: every field, defaults filled in, unknown
    keys gone, the images left out."""
    fields = FIELDS[path]
    sent = {k: v for k, v in body.items() if k in fields}
    return (
        {**fields, **sent, "init_images": None, "mask": None}
        if path == "img2img"
        else {**fields, **sent}
    )


def _refiner_swaps_in(req: dict[str, Any], switch: float, hires: bool) -> bool:
    """Whether a sampling step reaches `switch` of the schedule (under hi-res fix the refiner
    runs in the second pass, which starts at 1 − its denoising strength)."""
    if not 0 < switch < 1:
        return False
    steps = int(req.get("steps", 50))
    if not hires:
        return any(i / steps >= switch for i in range(steps))
    second = int(req.get("hr_second_pass_steps") or steps)
    strength = float(req.get("denoising_strength") or 0.7)
    start = 1 - strength
    return any(start + strength * i / second >= switch for i in range(second))


def _hires(
    app: A1111App, req: dict[str, Any], extra: dict[str, Any], dropped: list[str]
) -> tuple[int, int]:
    upscaler = req.get("hr_upscaler")
    if upscaler is not None and upscaler not in LATENT and upscaler not in app.upscalers:
        raise server_error("Exception", f"could not find upscaler named {upscaler}")
    if upscaler is not None and upscaler not in LATENT:
        _weights_or_lanczos(app, str(upscaler), dropped)
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
    app: A1111App,
    pictures: Pictures,
    req: dict[str, Any],
    init: bytes,
    override: dict[str, Any],
    applied: dict[str, Any],
    dropped: list[str],
    seed: int,
) -> bytes:
    width, height = req.get("width", 512), req.get("height", 512)
    if str(req.get("script_name") or "").lower() == "sd upscale":
        args = req.get("script_args") or ["", 64, "None", 2.0]
        names = [u.lower() for u in app.upscalers]
        chosen = args[2]
        if isinstance(chosen, str) and chosen.lower() not in names:
            raise server_error("ValueError", f"'{chosen.lower()}' is not in list")
        if isinstance(chosen, int):
            chosen = app.upscalers[chosen]
        listed = next(u for u in app.upscalers if u.lower() == str(chosen).lower())
        applied["upscaler"] = _weights_or_lanczos(app, listed, dropped)
        iw, ih = image_size(init) or (width, height)
        return pictures.resized(init, int(iw * float(args[3])), int(ih * float(args[3])))
    upscaler = override.get("upscaler_for_img2img")
    if upscaler is not None and upscaler not in app.upscalers:
        dropped.append(f"upscaler_for_img2img {upscaler!r}: not installed, Lanczos used")
        upscaler = "None"
    elif upscaler is not None:
        upscaler = _weights_or_lanczos(app, upscaler, dropped)
    applied["upscaler"] = upscaler
    steps = req.get("steps", 50)
    t_enc = int(min(req.get("denoising_strength", 0.75), 0.999) * steps)
    if steps - t_enc - 1 <= 0:  # sampling starts at sigma_max: one step from pure noise
        applied["destroyed"] = True
        return smeared(init, width, height, seed)
    return pictures.resized(init, width, height)
