"""Draw Things' side of the preflight (docs/servers.md#preflight).

`GET /` lists every key the running build knows with the app's current value, which is also
what any key a recipe leaves out becomes. The models folder, when the app runs on this machine,
says which files are downloaded and, in its registries (custom.json, custom_controlnet.json,
custom_lora.json), which of them the app has a specification for: a missing or unregistered
model or upscaler is a 422 for every item, a missing or unregistered refiner, ControlNet or
LoRA is silently dropped. When the folder cannot be read, every name the recipes give is
reported as not verified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emif_daemon.servers.dialects import DT_BY_KEY, dt_payload_problems
from emif_daemon.servers.drawthings_files import (
    FACE_RESTORATION_FILES,
    INPUT_OVERRIDES,
    KNOWN,
    NEEDS_INPUT_IMAGE,
    REGISTRIES,
    SDXL_FAMILY,
    Registry,
    Spec,
    control_files,
    model_files,
)
from emif_daemon.servers.preflight.checklist import Findings, Use
from emif_daemon.servers.sdapi import Server

# Keys a stage always sets itself, so the app's value never applies.
SET_BY_STAGE = {
    "txt2img": {"prompt", "negative_prompt", "seed"},
    "img2img": {"width", "height", "seed"},
}
UNSENDABLE = {
    "compression_artifacts",
    "compression_artifacts_quality",
    "color_calibration",
    "expand_prompt_to_json",
}
DROPPED = "Draw Things would silently run without it"
EVERY_ITEM = "Draw Things answers 422 for every item"


class Files:
    """Which files the app has downloaded: a file of that exact name in one of its folders."""

    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = list(folders)

    def has(self, name: str) -> bool:
        return any((folder / name).exists() for folder in self.folders)

    @property
    def shown(self) -> str:
        return ", ".join(str(f) for f in self.folders)


def check_drawthings(
    server: Server,
    uses: Sequence[Use],
    found: Findings,
    folders: list[Path] | None,
    unverified: str = "",
) -> None:
    """`folders`: the readable models folders, or None when files cannot be checked, for
    the reason `unverified`."""
    settings = server.get_json("/")
    if not isinstance(settings, dict):
        found.warnings.append(
            f"{server.url}/ gave no settings: keys not checked against this Draw Things build"
        )
        settings = {}
    _app_settings(settings, uses, found)
    registry = Registry.read(folders) if folders else None
    for bad in registry.unreadable if registry else []:
        found.warnings.append(
            f"{bad}: not JSON, so Draw Things ignores every entry in it; fix or remove it"
        )
    files = Files(folders) if folders else None
    for use in uses:
        known = set(settings) if settings else None
        found.problems += [f"{use.where}: {p}" for p in dt_payload_problems(use.payload, known)]
        if use.endpoint == "extras":
            found.problems.append(
                f'{use.where}: endpoint = "extras" is AUTOMATIC1111\'s; on Draw Things upscale '
                "with img2img at strength 0 and an upscaler file"
            )
            continue
        effective = _effective(settings, use.payload)
        _UseCheck(use, effective, found, files, registry, unverified).run()


def _effective(settings: Mapping[str, Any], payload: Mapping[str, Any]) -> dict[str, Any]:
    """What the app will use: its settings, overwritten by the keys sent (a null clears a
    string; on any other key it leaves the app's value)."""
    out = dict(settings)
    for key, value in payload.items():
        param = DT_BY_KEY.get(key)
        if param is not None and (value is not None or param.type == "string"):
            out[param.key] = value
    if "restore_faces" in payload:
        out["restore_faces"] = payload["restore_faces"]
    return out


def _app_settings(settings: Mapping[str, Any], uses: Sequence[Use], found: Findings) -> None:
    """The four settings no request can override, and every key a recipe leaves to the app."""
    if any(u.endpoint == "img2img" for u in uses) and settings.get("color_calibration") == "lab":
        found.problems.append(
            'Draw Things\' Color Calibration is "lab": it recolours every img2img answer and '
            "cannot be set over HTTP; set it to None in the app"
        )
    if settings.get("expand_prompt_to_json") is True:
        found.problems.append(
            "Draw Things' expand prompt to JSON is on: it may rewrite every prompt and cannot "
            "be set over HTTP; turn it off in the app"
        )
    if settings.get("compression_artifacts") not in (None, "disabled"):
        found.problems.append(
            f'Draw Things\' compression artifacts is "{settings["compression_artifacts"]}": it '
            "degrades every image and cannot be set over HTTP; set it to disabled in the app"
        )
    for use in uses:
        sent = {DT_BY_KEY[k].key for k in use.payload if k in DT_BY_KEY}
        skip = sent | UNSENDABLE | SET_BY_STAGE.get(use.endpoint, set())
        leaks = {k: v for k, v in settings.items() if k not in skip}
        if leaks:
            found.app_values[use.label] = leaks


class _UseCheck:
    """One payload's names against what the app has: its files and its registries when the
    models folder can be read (`files`, `registry`), else only the rules every name must
    follow, each name then reported as not verified."""

    def __init__(
        self,
        use: Use,
        effective: Mapping[str, Any],
        found: Findings,
        files: Files | None,
        registry: Registry | None,
        unverified: str,
    ) -> None:
        self.use, self.eff, self.found = use, effective, found
        self.files, self.registry, self.unverified = files, registry, unverified

    def run(self) -> None:
        model = self.model()
        refiner = self.refiner(model)
        self.named_files()
        self.loras(model, refiner)
        self.controls(model)
        _check_hires(self.use, self.eff, self.found)

    # -- what the app knows -----------------------------------------------------------------

    def spec(self, kind: str, name: str) -> Spec | None:
        if self.registry is not None:
            return self.registry.find(kind, name)
        known = KNOWN[kind]
        return known.get(name) or next((s for s in known.values() if s["name"] == name), None)

    def problem(self, text: str) -> None:
        self.found.problems.append(f"{self.use.where}: {text}")

    def not_verified(self, key: str, name: str) -> None:
        self.found.unverified.append(
            f'{self.use.where}: {key} "{name}": not verified: {self.unverified}'
        )

    def unregistered(self, kind: str, key: str, name: str, then: str) -> None:
        """A name the app has no specification for: not built in, not in its registry."""
        assert self.registry is not None
        registry = REGISTRIES[kind][0]
        why = self.registry.skipped[kind].get(name) or f"it is not in {registry}"
        self.problem(
            f'{key} "{name}" is not built into Draw Things and {why} (models folder '
            f"{self.files.shown if self.files else '?'}), so the app has no specification for "
            f"it ({then}); download it from Draw Things' model list, which registers it, or "
            "import it in the app"
        )

    def missing(self, key: str, name: str, then: str) -> None:
        shown = self.files.shown if self.files else ""
        self.problem(
            f'{key} "{name}" is not in Draw Things\' models folder ({shown}); download it in '
            f"Draw Things or correct the name ({then})"
        )

    # -- each kind of name --------------------------------------------------------------------

    def model(self) -> Spec | None:
        name = self.eff.get("model")
        if not isinstance(name, str) or not name:
            self.problem('model: not set, and Draw Things has no model selected; set "model"')
            return None
        spec = self.spec("model", name)
        if self.registry is None:
            self.not_verified("model", name)
            return spec
        if spec is None:
            self.unregistered("model", "model", name, f'"Unrecognized model name": {EVERY_ITEM}')
            return None
        self.downloaded("model", name, spec, EVERY_ITEM)
        return spec

    def downloaded(self, key: str, name: str, spec: Spec, then: str) -> None:
        assert self.files is not None
        needed = model_files(spec)
        if not self.files.has(needed[0]):
            self.missing(key, name, then)
            return
        for companion in needed[1:]:
            if not self.files.has(companion):
                self.problem(
                    f'{key} "{name}" needs "{companion}", which is not in the models folder '
                    f"({then}); download the model again in Draw Things"
                )

    def refiner(self, model: Spec | None) -> Spec | None:
        name = self.eff.get("refiner_model")
        if not isinstance(name, str) or not name:
            return None
        spec = self.spec("model", name)
        if spec is not None and model is not None and spec["file"] == model["file"]:
            self.problem(
                f'refiner_model "{name}" is the base model itself: Draw Things ignores it; '
                "name the refiner's file or set it to null"
            )
        versions = {v["version"] for v in (spec, model) if v is not None}
        if len(versions) > 1 and not versions <= SDXL_FAMILY:
            self.problem(
                f'refiner_model "{name}" is not compatible with model "{model and model["file"]}":'
                f" {DROPPED}"
            )
        if self.registry is None:
            self.not_verified("refiner_model", name)
        elif spec is None:
            self.unregistered("model", "refiner_model", name, DROPPED)
        else:
            self.downloaded("refiner_model", name, spec, DROPPED)
        return spec

    def named_files(self) -> None:
        """The upscaler and face restoration: each a 422 for every item when missing."""
        names: list[tuple[str, str]] = []
        upscaler = self.eff.get("upscaler")
        if isinstance(upscaler, str) and upscaler:
            names.append(("upscaler", upscaler))
        if self.eff.get("restore_faces") is True:
            names += [("restore_faces", f) for f in FACE_RESTORATION_FILES]
        for key, name in names:
            if "/" in name or "\\" in name:
                self.problem(f'{key} "{name}": a file name, without folders')
            elif self.files is None:
                self.not_verified(key, name)
            elif not self.files.has(name):
                self.missing(key, name, EVERY_ITEM)

    def loras(self, model: Spec | None, refiner: Spec | None) -> None:
        """Each LoRA file must be there (else 422 for every item) and be for the model's or
        the refiner's version: the app drops it otherwise, and takes a LoRA it has no
        specification for for an SD 1.5 one."""
        entries = self.eff.get("loras")
        for i, lora in enumerate(entries if isinstance(entries, list) else []):
            name = lora.get("file") if isinstance(lora, Mapping) else None
            if not isinstance(name, str) or not name:
                continue
            key = f"loras[{i}].file"
            if "/" in name or "\\" in name:
                self.problem(f'{key} "{name}": a file name, without folders')
                continue
            spec = self.spec("lora", name)
            if self.files is None:
                self.not_verified(key, name)
            elif not self.files.has(name):
                self.missing(key, name, EVERY_ITEM)
                continue
            version = spec["version"] if spec else "v1"
            allowed = {m["version"] for m in (model, refiner) if m is not None}
            if allowed and version not in allowed:
                why = (
                    f"for {version} models"
                    if spec or self.registry is None
                    else f"not in {REGISTRIES['lora'][0]}, so the app takes it for a v1 LoRA"
                )
                self.problem(
                    f'{key} "{name}" is {why}, not {" or ".join(sorted(allowed))}; {DROPPED}'
                )

    def controls(self, model: Spec | None) -> None:
        controls = self.eff.get("controls")
        for i, control in enumerate(controls if isinstance(controls, list) else []):
            if isinstance(control, Mapping):
                self.control(f"controls[{i}]", control, model)

    def control(self, key: str, control: Mapping[str, Any], model: Spec | None) -> None:
        file = control.get("file")
        if not isinstance(file, str) or not file:
            self.problem(f"{key} has no file; {DROPPED}")
            return
        weight = control.get("weight")
        if isinstance(weight, int | float) and weight <= 0:
            self.problem(f"{key}.weight is {weight}; {DROPPED}")
        override = str(control.get("inputOverride") or "").lower()
        if override not in INPUT_OVERRIDES:
            self.problem(
                f'{key}.inputOverride "{override}" is not one Draw Things knows (tile, depth, '
                f"canny, …); {DROPPED}"
            )
        spec = self.spec("controlnet", file)
        modifier = spec.get("modifier") or "" if spec else None
        if modifier == "" and not override:
            self.problem(
                f'{key} "{file}" is a union ControlNet: it needs "inputOverride" (e.g. "tile"); '
                f"{DROPPED}"
            )
        elif modifier is None and not override:
            self.found.warnings.append(
                f'{self.use.where}: {key} "{file}" has no inputOverride: a union ControlNet is '
                'dropped without one (e.g. "tile")'
            )
        version = spec["version"] if spec else None
        if version and model is not None and version != model["version"]:
            self.problem(
                f'{key} "{file}" is for {version} models, not {model["version"]}; {DROPPED}'
            )
        if self.use.endpoint == "txt2img" and (modifier or override) in NEEDS_INPUT_IMAGE:
            self.problem(
                f"{key} is a {modifier or override} control on txt2img, which has no input "
                f"image; {DROPPED}"
            )
        if self.files is None or self.registry is None:
            self.not_verified(f"{key}.file", file)
        elif spec is None:
            self.unregistered("controlnet", f"{key}.file", file, DROPPED)
        else:
            for needed in control_files(spec):
                if not self.files.has(needed):
                    self.missing(f"{key}.file", needed, DROPPED)


def _check_hires(use: Use, effective: Mapping[str, Any], found: Findings) -> None:
    if use.endpoint != "txt2img" or effective.get("hires_fix") is not True:
        return
    sizes = [effective.get(k) for k in ("hires_fix_width", "width", "hires_fix_height", "height")]
    if not all(isinstance(v, int) for v in sizes):
        return
    fw, w, fh, h = (int(v) // 64 * 64 for v in sizes)  # type: ignore[arg-type]
    if fw >= w or fh >= h:
        found.warnings.append(
            f"{use.where}: hires_fix is on but its first pass ({fw}×{fh}) is not smaller than "
            f"the output ({w}×{h}): Draw Things runs no hi-res pass"
        )
