"""Draw Things' side of the preflight (docs/servers.md#preflight).

`GET /` lists every key the running build knows with the app's current value, which is also
what any key a recipe leaves out becomes. The models folder, when the app runs on this machine,
says which files are downloaded: a missing model or upscaler is a 422 for every item, a missing
refiner or ControlNet is silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .dialects import DT_BY_KEY, dt_payload_problems
from .findings import Findings, Use
from .sdapi import Server
from .zoo import (
    DT_CONTROLNETS,
    DT_MODELS,
    FACE_RESTORATION_FILES,
    INPUT_OVERRIDES,
    NEEDS_INPUT_IMAGE,
    SDXL_FAMILY,
)

# Keys a stage always sets itself, so the app's value never applies.
SET_BY_STAGE = {"txt2img": {"prompt", "negative_prompt", "seed"},
                "img2img": {"width", "height", "seed"}}  # fmt: skip
UNSENDABLE = {"compression_artifacts", "compression_artifacts_quality", "color_calibration",
              "expand_prompt_to_json"}  # fmt: skip


class Files:
    """Which files the app has downloaded: a file of that exact name in one of its folders."""

    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = list(folders)

    def has(self, name: str) -> bool:
        return any((folder / name).exists() for folder in self.folders)

    def missing(self, where: str, key: str, name: str, then: str) -> str:
        shown = ", ".join(str(f) for f in self.folders)
        return (
            f'{where}: {key} "{name}" is not in Draw Things\' models folder ({shown}); download '
            f"it in Draw Things or correct the name ({then})"
        )


def check_drawthings(
    server: Server, uses: Sequence[Use], found: Findings, folders: list[Path] | None
) -> None:
    settings = server.get_json("/")
    if not isinstance(settings, dict):
        found.warnings.append(
            f"{server.url}/ gave no settings: keys not checked against this Draw Things build"
        )
        settings = {}
    _app_settings(settings, uses, found)
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
        model = _check_model(use, effective, files, found)
        _check_refiner(use, effective, model, files, found)
        _check_files(use, effective, files, found)
        _check_controls(use, effective, model, files, found)
        _check_hires(use, effective, found)


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


def _model_file(name: str) -> str | None:
    """The file of a model named by file or display name; None for a name we cannot map."""
    if name in DT_MODELS or name.endswith(".ckpt"):
        return name
    return next((f for f, spec in DT_MODELS.items() if spec[0] == name), None)


def _check_model(
    use: Use, effective: Mapping[str, Any], files: Files | None, found: Findings
) -> str | None:
    name = effective.get("model")
    if not isinstance(name, str) or not name:
        found.problems.append(
            f'{use.where}: model: not set, and Draw Things has no model selected; set "model"'
        )
        return None
    file = _model_file(name)
    if files is None:
        return file
    if file is None:
        found.warnings.append(f'{use.where}: model "{name}": not a file name, not checked')
        return None
    if not files.has(file):
        found.problems.append(files.missing(use.where, "model", name, "422 for every item"))
        return file
    for companion in DT_MODELS.get(file, ("", "", ()))[2]:
        if not files.has(companion):
            found.problems.append(
                f'{use.where}: model "{name}" needs "{companion}", which is not in the models '
                "folder; download the model again in Draw Things"
            )
    return file


def _version(file: str | None) -> str | None:
    spec = DT_MODELS.get(file or "")
    return spec[1] if spec else None


def _check_refiner(
    use: Use, effective: Mapping[str, Any], model: str | None, files: Files | None, found: Findings
) -> None:
    name = effective.get("refiner_model")
    if not isinstance(name, str) or not name:
        return
    file = _model_file(name)
    then = "it would silently run without a refiner"
    if file is not None and file == model:
        found.problems.append(
            f'{use.where}: refiner_model "{name}" is the base model itself: Draw Things ignores '
            "it; name the refiner's file or set it to null"
        )
    versions = {_version(file), _version(model)}
    if None not in versions and len(versions) > 1 and not versions <= SDXL_FAMILY:
        found.problems.append(
            f'{use.where}: refiner_model "{name}" is not compatible with model "{model}": '
            f"Draw Things ignores it; {then}"
        )
    if files is not None and file is not None and not files.has(file):
        found.problems.append(files.missing(use.where, "refiner_model", name, then))


def _check_files(
    use: Use, effective: Mapping[str, Any], files: Files | None, found: Findings
) -> None:
    """Upscaler, LoRAs and face restoration: each a 422 for every item when missing."""
    names: list[tuple[str, str]] = []
    upscaler = effective.get("upscaler")
    if isinstance(upscaler, str) and upscaler:
        names.append(("upscaler", upscaler))
    loras = effective.get("loras")
    for i, lora in enumerate(loras if isinstance(loras, list) else []):
        if isinstance(lora, dict) and isinstance(lora.get("file"), str):
            names.append((f"loras[{i}].file", lora["file"]))
    if effective.get("restore_faces") is True:
        names += [("restore_faces", f) for f in FACE_RESTORATION_FILES]
    for key, name in names:
        if "/" in name or "\\" in name:
            found.problems.append(f'{use.where}: {key} "{name}": a file name, without folders')
        elif files is not None and not files.has(name):
            found.problems.append(files.missing(use.where, key, name, "422 for every item"))


def _check_controls(
    use: Use, effective: Mapping[str, Any], model: str | None, files: Files | None, found: Findings
) -> None:
    controls = effective.get("controls")
    for i, control in enumerate(controls if isinstance(controls, list) else []):
        if isinstance(control, dict):
            _check_control(use, f"controls[{i}]", control, model, files, found)


def _check_control(
    use: Use,
    key: str,
    control: Mapping[str, Any],
    model: str | None,
    files: Files | None,
    found: Findings,
) -> None:
    dropped = "Draw Things would silently run without this ControlNet"
    file = control.get("file")
    if not isinstance(file, str) or not file:
        found.problems.append(f"{use.where}: {key} has no file; {dropped}")
        return
    weight = control.get("weight")
    if isinstance(weight, int | float) and weight <= 0:
        found.problems.append(f"{use.where}: {key}.weight is {weight}; {dropped}")
    override = str(control.get("inputOverride") or "").lower()
    if override not in INPUT_OVERRIDES:
        found.problems.append(
            f'{use.where}: {key}.inputOverride "{override}" is not one Draw Things knows (tile, '
            f"depth, canny, …); {dropped}"
        )
    version, modifier = DT_CONTROLNETS.get(file, (None, None))
    if modifier == "" and not override:
        found.problems.append(
            f'{use.where}: {key} "{file}" is a union ControlNet: it needs "inputOverride" '
            f'(e.g. "tile"); {dropped}'
        )
    elif modifier is None and not override:
        found.warnings.append(
            f'{use.where}: {key} "{file}" has no inputOverride: a union ControlNet is dropped '
            'without one (e.g. "tile")'
        )
    model_version = _version(model)
    if version and model_version and version != model_version:
        found.problems.append(
            f'{use.where}: {key} "{file}" is for {version} models, not {model_version}; {dropped}'
        )
    if use.endpoint == "txt2img" and (modifier or override) in NEEDS_INPUT_IMAGE:
        found.problems.append(
            f"{use.where}: {key} is a {modifier or override} control on txt2img, which has no "
            f"input image; {dropped}"
        )
    if files is not None and not files.has(file):
        found.problems.append(files.missing(use.where, f"{key}.file", file, dropped))


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
