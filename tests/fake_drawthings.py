"""Draw Things' HTTP API server as its source describes it (docs/servers.md), for the tests.

The app knows a model, ControlNet or LoRA by its specification: built in, or registered in
custom.json / custom_controlnet.json / custom_lora.json when it was downloaded; the team's
Juggernaut XL and Xinsir Union are known only because the default app has installed them
(`install`), and a test can install a file without registering it.

Driven by tests/drawthings_parameters.json: every key, alias, type, range and exact enum name.
A request is decoded in the app's order, so the first error wins with the app's own text:
JSON → restore_faces and init_images → every parameter (alias clash, type, range, enum) →
unknown keys → init image size → model, LoRA, upscaler and face files → model files → the
refiner (dropped silently) → prompt. Every error is HTTP 422; so is a failure while
generating. What the app does silently — a refiner or ControlNet dropped, a key taken from the
app window — is written to the request's record, where a test can see it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fake_images import Pictures, image_size

DATA = json.loads((Path(__file__).parent / "drawthings_parameters.json").read_text())
PARAMS = [p for p in DATA["keys"] if p["key"] not in ("restore_faces", "init_images")]
BY_SPELLING = {s: p for p in PARAMS for s in (p["key"], *p["aliases"])}
UPSCALERS: dict[str, int] = DATA["upscalers"]
CONTROL_FIELDS: list[str] = DATA["control_fields"]
INPUT_OVERRIDES: set[str] = set(DATA["input_overrides"])
FACES: list[str] = DATA["face_restoration_files"]
SDXL = {
    "text_encoder": "open_clip_vit_bigg14_f16.ckpt",
    "clip_encoder": "clip_vit_l14_f16.ckpt",
    "autoencoder": "sdxl_vae_v1.0_f16.ckpt",
}
# Built into the app (ModelZoo.swift, ControlNetZoo.swift, LoRAZoo.swift): known without a
# registry. Anything else the app knows only from custom*.json in its models folder.
BUILTIN_MODELS: dict[str, dict[str, Any]] = {
    s["file"]: s
    for s in (
        {
            "name": "SDXL Base (v1.0)",
            "file": "sd_xl_base_1.0_f16.ckpt",
            "version": "sdxl_base_v0.9",
            **SDXL,
        },
        {
            "name": "SDXL Refiner (v1.0)",
            "file": "sd_xl_refiner_1.0_f16.ckpt",
            "version": "sdxl_refiner_v1.0",
            **SDXL,
        },
        {
            "name": "SDXL Refiner v1.0 (8-bit)",
            "file": "sd_xl_refiner_1.0_q6p_q8p.ckpt",
            "version": "sdxl_refiner_v1.0",
            **SDXL,
        },
        {"name": "Stable Diffusion v1.5", "file": "sd_v1.5_f16.ckpt", "version": "v1"},
    )
}
BUILTIN_CONTROLNETS: dict[str, dict[str, Any]] = {
    "controlnet_tile_1.x_v1.1_f16.ckpt": {
        "name": "Tile (SD v1.x, ControlNet 1.1)",
        "file": "controlnet_tile_1.x_v1.1_f16.ckpt",
        "version": "v1",
        "modifier": "tile",
        "type": "controlnet",
        "global_average_pooling": False,
    },
}
BUILTIN_LORAS: dict[str, dict[str, Any]] = {
    "tcd_sd_v1.5_lora_f16.ckpt": {
        "name": "TCD Stable Diffusion v1.5",
        "file": "tcd_sd_v1.5_lora_f16.ckpt",
        "prefix": "",
        "version": "v1",
    },
}
# Downloaded from the app's community lists: the app writes each one's specification to the
# registry of its kind. Snake-case keys, as the app's JSONEncoder writes them.
JUGGERNAUT_XL: dict[str, Any] = {
    "name": "Juggernaut XL v9 (8-bit)",
    "file": "juggernaut_xl_v9_q6p_q8p.ckpt",
    "prefix": "",
    "version": "sdxl_base_v0.9",
    "upcast_attention": False,
    "default_scale": 16,
    "modifier": "none",
    "text_encoder": "juggernaut_xl_v9_open_clip_vit_bigg14_f16.ckpt",
    "clip_encoder": "juggernaut_xl_v9_clip_vit_l14_f16.ckpt",
    "autoencoder": "sdxl_vae_v1.0_f16.ckpt",
}
JUGGERNAUT_REBORN: dict[str, Any] = {
    "name": "Juggernaut Reborn (8-bit)",
    "file": "juggernaut_reborn_q6p_q8p.ckpt",
    "prefix": "",
    "version": "v1",
    "upcast_attention": False,
    "default_scale": 12,
    "modifier": "none",
    "text_encoder": "juggernaut_reborn_clip_vit_l14_f16.ckpt",
}
XINSIR_UNION: dict[str, Any] = {
    "name": "Xinsir Union ProMax (SDXL, ControlNet)",
    "file": "controlnet_xinsir_union_promax_sdxl_1.0_f16.ckpt",
    "version": "sdxl_base_v0.9",
    "type": "controlnetunion",
    "global_average_pooling": False,
    "transformer_blocks": [],
}
MORE_DETAILS: dict[str, Any] = {
    "name": "Add More Details (Detail Enhancer / Tweaker)",
    "file": "add_more_details__detail_enhancer___tweaker__lora_f16.ckpt",
    "prefix": "",
    "version": "v1",
}
SDXL_RENDER: dict[str, Any] = {
    "name": "SDXL Render v2.0",
    "file": "sdxl_render_v2.0_lora_f16.ckpt",
    "prefix": "",
    "version": "v1",
}
REGISTRY_FILES = {
    "model": "custom.json",
    "controlnet": "custom_controlnet.json",
    "lora": "custom_lora.json",
}
# Keys the app's decoder needs in a registry entry; an entry without them is skipped.
REQUIRED = {
    "model": ("name", "file", "prefix", "version", "upcast_attention", "default_scale"),
    "controlnet": ("name", "file", "version", "type", "global_average_pooling"),
    "lora": ("name", "file", "prefix", "version"),
}
SDXL_FAMILY = {"sdxl_base_v0.9", "sdxl_refiner_v1.0", "ssd_1b"}
NEEDS_INPUT = {"tile", "blur", "gray", "low quality"}
UNSENDABLE = {p["key"] for p in PARAMS if not p["sendable"]}


def model_files(spec: dict[str, Any]) -> list[str]:
    """The files the app counts a model downloaded by (ModelZoo.isModelDownloaded)."""
    v1 = spec["version"] == "v1"
    files = [
        spec["file"],
        spec.get("autoencoder") or "vae_ft_mse_840000_f16.ckpt",
        spec.get("text_encoder")
        or ("clip_vit_l14_f16.ckpt" if v1 else "open_clip_vit_h14_f16.ckpt"),
    ]
    return files + [spec[k] for k in ("clip_encoder", "image_encoder", "t5_encoder") if spec.get(k)]


# What a Mac with the team's models has downloaded: the built-ins it uses, the community
# models and ControlNet of the shipped recipes (registered), the upscalers, face restoration.
TEAM = [("model", JUGGERNAUT_XL), ("controlnet", XINSIR_UNION)]
INSTALLED: set[str] = {
    *(f for spec in BUILTIN_MODELS.values() for f in model_files(spec)),
    *UPSCALERS,
    *BUILTIN_CONTROLNETS,
    *FACES,
    *model_files(JUGGERNAUT_XL),
    XINSIR_UNION["file"],
}


def app_defaults() -> dict[str, Any]:
    """The app window of a user who set up SDXL: what every key left out becomes."""
    values: dict[str, Any] = {}
    for p in PARAMS:
        kind = p["type"]
        if kind in ("int", "double"):
            low, high = p["min"], p["max"]
            values[p["key"]] = low if low > 0 else min(high, 1 if kind == "int" else 1.0)
        elif kind == "bool":
            values[p["key"]] = False
        elif kind == "enum":
            values[p["key"]] = p["values"][0]
        elif kind == "json":
            values[p["key"]] = []
        else:
            values[p["key"]] = None
    values.update(
        {
            "model": "sd_xl_base_1.0_f16.ckpt",
            "width": 1024,
            "height": 1024,
            "steps": 30,
            "guidance_scale": 4.5,
            "sampler": "DPM++ 2M AYS",
            "seed": -1,
            "strength": 1.0,
            "prompt": "",
            "negative_prompt": "",
            "hires_fix_width": 512,
            "hires_fix_height": 512,
            "hires_fix_strength": 0.7,
            "shift": 1.0,
            "refiner_start": 0.85,
            "aesthetic_score": 6.0,
            "negative_aesthetic_score": 2.5,
            "original_width": 1024,
            "original_height": 1024,
            "target_width": 1024,
            "target_height": 1024,
            "negative_original_width": 512,
            "negative_original_height": 512,
            "upscaler_scale": 0,
            "stochastic_sampling_gamma": 0.3,
            "compression_artifacts": "disabled",
            "color_calibration": "none",
            "cfg_zero_star": True,
        }
    )
    return values


class Refusal(Exception):
    """A 422 with the app's text."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def swift_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _num(value: float, kind: str) -> str:
    return repr(float(value)) if kind == "double" else str(int(value))


def _team_registry() -> dict[str, list[dict[str, Any]]]:
    registry: dict[str, list[dict[str, Any]]] = {k: [] for k in REGISTRY_FILES}
    for kind, spec in TEAM:
        registry[kind].append(dict(spec))
    return registry


@dataclass
class DrawThingsApp:
    """The app behind the server: its window's settings, its downloaded files, the
    specifications it has registered for them, its build."""

    settings: dict[str, Any] = field(default_factory=app_defaults)
    files: set[str] = field(default_factory=lambda: set(INSTALLED))
    # the entries of custom.json, custom_controlnet.json, custom_lora.json
    registry: dict[str, list[dict[str, Any]]] = field(default_factory=_team_registry)
    folder: Path | None = None  # when set, the files and registries are those in this folder
    known: set[str] = field(default_factory=lambda: {p["key"] for p in PARAMS})

    def has(self, name: str) -> bool:
        if self.folder is not None:
            return (self.folder / name).exists()
        return name in self.files

    def use_folder(self, folder: Path) -> None:
        """Keep the downloaded files as empty files in `folder`, with the registries beside
        them (a daemon on this machine can then look at the same folder)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.files:
            (folder / name).write_bytes(b"")
        self.folder = folder
        self._write_registries()

    def remove(self, name: str) -> None:
        self.files.discard(name)
        if self.folder is not None:
            (self.folder / name).unlink(missing_ok=True)

    def install(self, kind: str, spec: dict[str, Any], *, register: bool = True) -> None:
        """Download a community file as the app does: its files, and (unless `register` is
        false: a file copied in by hand) its specification in the registry."""
        names = model_files(spec) if kind == "model" else [spec["file"]]
        self.files.update(names)
        if self.folder is not None:
            for name in names:
                (self.folder / name).write_bytes(b"")
        if register:
            self.unregister(kind, spec["file"])
            self.registry[kind].append(dict(spec))
            self._write_registries()

    def unregister(self, kind: str, file: str) -> None:
        self.registry[kind] = [e for e in self.registry[kind] if e.get("file") != file]
        self._write_registries()

    def _write_registries(self) -> None:
        if self.folder is None:
            return
        for kind, name in REGISTRY_FILES.items():
            path = self.folder / name
            if self.registry[kind]:
                path.write_text(json.dumps(self.registry[kind], indent=2))
            else:
                path.unlink(missing_ok=True)

    def specs(self, kind: str) -> dict[str, dict[str, Any]]:
        """What the app knows: built-ins, then every decodable registry entry."""
        builtin = {
            "model": BUILTIN_MODELS,
            "controlnet": BUILTIN_CONTROLNETS,
            "lora": BUILTIN_LORAS,
        }[kind]
        entries = self.registry[kind]
        if self.folder is not None:
            path = self.folder / REGISTRY_FILES[kind]
            try:
                entries = json.loads(path.read_text()) if path.exists() else []
            except ValueError:  # the app ignores a registry it cannot parse
                entries = []
        custom = {
            e["file"]: e
            for e in entries
            if isinstance(e, dict)
            and all(isinstance(e.get(k), str | bool | int) for k in REQUIRED[kind])
        }
        return {**builtin, **custom}

    def build_before(self, date: str) -> None:
        """An older app build: keys added on or after `date` are unknown to it."""
        self.known = {p["key"] for p in PARAMS if p.get("added_in", "(0)").split("(")[1] < date}

    def state(self) -> dict[str, Any]:
        """GET /: the current value of every parameter this build knows."""
        return {k: v for k, v in self.settings.items() if k in self.known}


@dataclass
class Job:
    config: dict[str, Any]
    sent: set[str]
    init: bytes | None
    faces: bool
    dropped: list[str] = field(default_factory=list)


def _decode_value(param: dict[str, Any], spelled: str, value: Any) -> tuple[bool, Any]:
    """(keep the app's value?, the decoded value); raises Refusal like Swift's JSONDecoder."""
    kind, key = param["type"], param["key"]
    path = f'[CodingKeys(stringValue: "{spelled}", intValue: nil)]'
    if value is None:
        if kind == "enum":
            raise Refusal(
                f"valueNotFound(Swift.String, Swift.DecodingError.Context(codingPath: "
                f'{path}, debugDescription: "Expected String value but found null '
                'instead.", underlyingError: nil))'
            )
        return kind != "string", None
    swift = {
        "int": "Int",
        "double": "Double",
        "bool": "Bool",
        "string": "String",
        "enum": "String",
    }.get(kind)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {
        "int": number and float(value).is_integer(),
        "double": number,
        "bool": isinstance(value, bool),
        "string": isinstance(value, str),
        "enum": isinstance(value, str),
    }.get(kind, True)
    if kind == "int" and number and not ok:
        raise Refusal(
            f"dataCorrupted(Swift.DecodingError.Context(codingPath: {path}, "
            f'debugDescription: "Parsed JSON number <{value}> does not fit in Int.", '
            "underlyingError: nil))"
        )
    if not ok:
        raise Refusal(
            f"typeMismatch(Swift.{swift}, Swift.DecodingError.Context(codingPath: "
            f'{path}, debugDescription: "Expected to decode {swift} but found '
            f'{type(value).__name__} instead.", underlyingError: nil))'
        )
    if kind == "int":
        value = int(value)
    if kind == "enum" and value not in param["values"]:
        raise Refusal(f"Invalid value for {spelled} (options: {swift_list(param['values'])})")
    if kind in ("int", "double") and not param["min"] <= value <= param["max"]:
        low, high = _num(param["min"], kind), _num(param["max"], kind)
        raise Refusal(
            f"Value for {param['error_title']} must be between {low} and {high}, "
            f"inclusive (was {_num(value, kind)})"
        )
    if key in ("loras", "controls"):
        _decode_entries(key, value)
    return False, value


# Each field of a JSLoRA / JSControl: its Swift type, and whether it may be absent or null.
ENTRY_FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "loras": {"file": ("String", True), "weight": ("Float", False), "mode": ("String", True)},
    "controls": {
        "file": ("String", True),
        **{
            f: (t, False)
            for f, t in (
                ("weight", "Float"),
                ("guidanceStart", "Float"),
                ("guidanceEnd", "Float"),
                ("noPrompt", "Bool"),
                ("globalAveragePooling", "Bool"),
                ("downSamplingRate", "Float"),
                ("controlImportance", "String"),
                ("inputOverride", "String"),
                ("targetBlocks", "Array<String>"),
            )
        },
    },
}


def _decode_entries(key: str, value: Any) -> None:
    """`loras` and `controls` decode as arrays of JSLoRA / JSControl: any other shape, a
    required field missing, or a field of another type is a DecodingError (422)."""
    path = f'CodingKeys(stringValue: "{key}", intValue: nil)'
    if not isinstance(value, list):
        raise Refusal(
            f"typeMismatch(Swift.Array<Any>, Swift.DecodingError.Context(codingPath: "
            f'[{path}], debugDescription: "Expected to decode Array<Any> but found '
            f'{_json_name(value)} instead.", underlyingError: nil))'
        )
    for i, entry in enumerate(value):
        at = f'{path}, _JSONKey(stringValue: "Index {i}", intValue: {i})'
        if not isinstance(entry, dict):
            raise Refusal(
                f"typeMismatch(Swift.Dictionary<Swift.String, Any>, Swift.Decoding"
                f'Error.Context(codingPath: [{at}], debugDescription: "Expected to '
                f"decode Dictionary<String, Any> but found {_json_name(entry)} "
                'instead.", underlyingError: nil))'
            )
        for name, (swift, optional) in ENTRY_FIELDS[key].items():
            if name not in entry and not optional:
                raise Refusal(_key_not_found(name))
            if entry.get(name) is None:
                if not optional:  # a value was required: JSONDecoder found null
                    raise Refusal(
                        f"valueNotFound(Swift.{swift}, Swift.DecodingError.Context(codingPath: "
                        f'[{at}, CodingKeys(stringValue: "{name}", intValue: nil)], '
                        f'debugDescription: "Expected {swift} value but found null instead.", '
                        "underlyingError: nil))"
                    )
                continue
            if not _is_swift(swift, entry[name]):
                raise Refusal(
                    f"typeMismatch(Swift.{swift}, Swift.DecodingError.Context(codingPath: [{at}, "
                    f'CodingKeys(stringValue: "{name}", intValue: nil)], debugDescription: '
                    f'"Expected to decode {swift} but found {_json_name(entry[name])} '
                    'instead.", underlyingError: nil))'
                )


def _is_swift(swift: str, value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if swift == "Float":
        return number
    if swift == "Bool":
        return isinstance(value, bool)
    if swift == "String":
        return isinstance(value, str)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _json_name(value: Any) -> str:
    """How Foundation names a JSON value in a type mismatch."""
    if isinstance(value, dict):
        return "a dictionary"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string/data"
    if isinstance(value, bool):
        return "bool"
    return "a number" if value is not None else "null"


def _key_not_found(name: str) -> str:
    return (
        f'keyNotFound(CodingKeys(stringValue: "{name}", intValue: nil), '
        f'Swift.DecodingError.Context(codingPath: [], debugDescription: "No value associated '
        f'with key CodingKeys(stringValue: \\"{name}\\", intValue: nil).", underlyingError: '
        "nil))"
    )


def _init_images(body: dict[str, Any]) -> list[bytes] | None:
    if "init_images" not in body:
        return None
    value = body["init_images"]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refusal(
            "typeMismatch(Swift.Array<Foundation.Data>, Swift.DecodingError.Context("
            'codingPath: [], debugDescription: "Expected to decode Array<Data>", '
            "underlyingError: nil))"
        )
    images = []
    for text in value:
        try:  # Foundation's base64: no data: prefix, no line breaks
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Refusal(
                "dataCorrupted(Swift.DecodingError.Context(codingPath: [], "
                'debugDescription: "Encountered Data is not valid Base64.", '
                "underlyingError: nil))"
            ) from exc
        if image_size(data) is None:
            raise Refusal("Data in init_images did not represent a valid image")
        images.append(data)
    return images


def decode(app: DrawThingsApp, path: str, raw: bytes) -> Job:
    """A request as the app reads it, in its order; raises Refusal with the app's text."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise Refusal(
            "dataCorrupted(Swift.DecodingError.Context(codingPath: [], "
            'debugDescription: "The given data was not valid JSON.", '
            "underlyingError: nil))"
        ) from exc
    if not isinstance(body, dict):
        raise Refusal(
            "typeMismatch(Swift.Dictionary<Swift.String, Any>, "
            'Swift.DecodingError.Context(codingPath: [], debugDescription: "Expected '
            'to decode Dictionary<String, Any>", underlyingError: nil))'
        )
    faces = body.get("restore_faces")
    if faces is not None and not isinstance(faces, bool):
        raise Refusal("typeMismatch(Swift.Bool, restore_faces)")
    images = _init_images(body)
    config, sent = dict(app.settings), set()
    for param in PARAMS:
        if param["key"] not in app.known:
            continue
        spellings = [param["key"], *param["aliases"]]
        present = [s for s in spellings if s in body]  # an alias equal to the key counts twice
        if len(present) > 1:
            raise Refusal(
                f"More than one key for {param['error_title']} specified (must only "
                f"specify one of {swift_list(spellings)})"
            )
        if present:
            keep, value = _decode_value(param, present[0], body[present[0]])
            if not keep:
                config[param["key"]] = value
                sent.add(param["key"])
    spelled = {s for p in PARAMS if p["key"] in app.known for s in (p["key"], *p["aliases"])}
    unknown = sorted(set(body) - spelled - {"restore_faces", "init_images"})
    if unknown:
        raise Refusal(f"Unrecognized keys: {swift_list(unknown)}")
    init = None
    if path == "img2img" and images is not None and len(images) == 1:
        width, height = image_size(images[0]) or (0, 0)
        if height != config["height"]:
            raise Refusal(
                f"init_images height doesn't match {height} from the parameter {config['height']}"
            )
        if width != config["width"]:
            raise Refusal(
                f"init_images width doesn't match {width} from the parameter {config['width']}"
            )
        init = images[0]
    if path == "txt2img" and "init_images" in body:
        raise Refusal("init_images is not supported for text-to-image")
    job = Job(config, sent, init, faces is True)
    if path == "img2img" and init is None:
        job.dropped.append("init_images: not exactly one image, the app's canvas is used")
    _invocation(app, job)
    return job


def model_spec(app: DrawThingsApp, name: str) -> dict[str, Any] | None:
    """A model named by file or display name, among what the app knows."""
    specs = app.specs("model")
    return specs.get(name) or next((s for s in specs.values() if s["name"] == name), None)


def _missing_file(app: DrawThingsApp, name: str) -> None:
    if "/" in name or "\\" in name:
        raise Refusal("Model names may not have any '/' or '\\' characters in them")
    if not app.has(name):
        raise Refusal(f"Missing file: {name} (in CLI, see --help to see the lists of files)")


def _invocation(app: DrawThingsApp, job: Job) -> None:
    config = job.config
    name = config.get("model")
    if name is None:
        raise Refusal("Missing 'model' parameter")
    spec = model_spec(app, name)
    if spec is None:
        raise Refusal(
            f'Unrecognized model name "{name}" (see --help for a list of available models)'
        )
    for lora in config.get("loras") or []:
        _missing_file(app, str(lora.get("file") or ""))
    if config.get("upscaler"):
        _missing_file(app, config["upscaler"])
    for face in FACES if job.faces else []:
        _missing_file(app, face)
    if not all(app.has(f) for f in model_files(spec)):
        raise Refusal(
            "Missing files for model, see --help for a list of which files this model needs"
        )
    config["model"] = spec["file"]
    refiner = config.get("refiner_model")
    if refiner:
        rspec = model_spec(app, refiner)
        if rspec is None or not all(app.has(f) for f in model_files(rspec)):
            job.dropped.append(f"refiner_model {refiner!r}: unknown or not downloaded")
            config["refiner_model"] = None
        else:
            config["refiner_model"] = rspec["file"]
    if config.get("prompt") is None:
        raise Refusal("Missing prompt")


def generate(
    app: DrawThingsApp, pictures: Pictures, path: str, job: Job
) -> tuple[list[bytes], dict[str, Any]]:
    """What the generator does with a decoded job: the images and what was really applied."""
    c, dropped = job.config, job.dropped
    models = app.specs("model")
    model, version = c["model"], models[c["model"]]["version"]
    refiner = c.get("refiner_model")
    rversion = None
    if refiner is not None:
        rversion = models[refiner]["version"]
        if refiner == model or (rversion != version and not {rversion, version} <= SDXL_FAMILY):
            dropped.append(f"refiner_model {refiner!r}: the base model itself or incompatible")
            refiner, rversion = None, None
    loras = _loras(app, c.get("loras") or [], {version, rversion} - {None}, dropped)
    strength = 1.0 if path == "txt2img" else float(c["strength"])
    controls = [_control(app, ctl, version, path, dropped) for ctl in c.get("controls") or []]
    width, height = c["width"] // 64 * 64, c["height"] // 64 * 64
    hires = bool(c["hires_fix"]) and path == "txt2img"
    if hires and not (
        c["hires_fix_width"] // 64 * 64 < width
        and c["hires_fix_height"] // 64 * 64 < height
        and int(c["hires_fix_strength"] * c["steps"]) > 0
    ):
        dropped.append("hires_fix: first pass not smaller than the output, no hi-res pass")
        hires = False
    factor = 1
    if c.get("upscaler"):
        scale = c.get("upscaler_scale")
        factor = scale if scale in (2, 4) else UPSCALERS.get(c["upscaler"], 4)
    size = (width * factor, height * factor)
    if job.init is not None and strength >= 0.9:  # redrawn from noise: a new picture
        images = [pictures.render(f"redrawn:{c['seed']}", *size)]
    elif job.init is not None:
        images = [pictures.resized(job.init, *size)]
    else:
        count = int(c["batch_size"]) * int(c["batch_count"])
        base = "canvas" if path == "img2img" else f"seed:{c['seed']}"
        images = [pictures.render(f"{base}:{k}", *size) for k in range(count)]
    applied = {
        "model": model,
        "refiner_model": refiner,
        "upscaler": c.get("upscaler") or None,
        "upscale_factor": factor,
        "controls": [f for f in controls if f],
        "hires_fix": hires,
        "strength": strength,
        "size": list(size),
        "loras": loras,
        "restore_faces": job.faces,
        "color_calibration": c.get("color_calibration"),
    }
    return images, applied


def _loras(
    app: DrawThingsApp, loras: list[dict[str, Any]], versions: set[Any], dropped: list[str]
) -> list[str]:
    """The LoRA files the generator applies: one without a specification counts as v1, and
    one for neither the model's nor the refiner's version is dropped."""
    specs, used = app.specs("lora"), []
    for lora in loras:
        file = lora.get("file")
        version = specs.get(str(file), {}).get("version", "v1")
        if version in versions:
            used.append(str(file))
        else:
            dropped.append(f"loras {file!r}: for {version} models, not {sorted(versions)}")
    return used


def _control(
    app: DrawThingsApp, ctl: dict[str, Any], version: str, path: str, dropped: list[str]
) -> str | None:
    """The file of a control the generator uses, or None (and why, in `dropped`)."""
    file = ctl.get("file")
    spec = app.specs("controlnet").get(str(file))
    modifier = (spec or {}).get("modifier") or ""
    override = str(ctl.get("inputOverride", "")).lower()
    override = override if override in INPUT_OVERRIDES else ""
    why = None
    if not file or spec is None:
        why = "no ControlNet specification for this file"
    elif not app.has(file):
        why = "not downloaded"
    elif spec["version"] != version:
        why = f"for {spec['version']} models, the model is {version}"
    elif not float(ctl.get("weight", 0)) > 0:
        why = "weight <= 0"
    elif not (modifier or override):
        why = "a union ControlNet without a recognised inputOverride"
    elif (modifier or override) in NEEDS_INPUT and path == "txt2img":
        why = "no input image on txt2img"
    if why:
        dropped.append(f"controls {file!r}: {why}")
        return None
    return str(file)
