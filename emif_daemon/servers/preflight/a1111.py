"""AUTOMATIC1111 / Forge side of the preflight (docs/servers.md#preflight).

Its list endpoints name every checkpoint, upscaler, sampler, scheduler, script and ControlNet
model it has. A checkpoint override that is not an exact name, an img2img upscaler it does not
have, an unknown sampler or a ControlNet name with the wrong hash are all silently replaced
with HTTP 200; a refiner or hi-res upscaler it cannot find is a 500 for every item. An
upscaler it lists without its weights (R-ESRGAN, ESRGAN, SwinIR, DAT, ScuNET, LDSR until they
are downloaded: `model_path` is then the download URL) is tried, fails to download offline,
and becomes a plain Lanczos resize with HTTP 200.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emif_daemon.servers.dialects import a1111_payload_problems, checkpoint_stem
from emif_daemon.servers.preflight.checklist import Findings, Use
from emif_daemon.servers.sdapi import Server

LATENT_MODES = {
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
}


class Lists:
    """The server's list endpoints, each fetched once."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._cache: dict[str, Any] = {}

    def get(self, path: str) -> Any:
        if path not in self._cache:
            self._cache[path] = self.server.get_json(path)
        return self._cache[path]

    def entries(self, path: str) -> list[dict[str, Any]]:
        value = self.get(path)
        return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []

    def names(self, path: str, *fields: str) -> set[str]:
        out: set[str] = set()
        for entry in self.entries(path):
            for f in fields:
                value = entry.get(f)
                if isinstance(value, str):
                    out.add(value)
                elif isinstance(value, list):
                    out.update(v for v in value if isinstance(v, str))
        return out

    def checkpoint_aliases(self) -> set[str]:
        """Every name A1111 takes as an exact checkpoint alias."""
        out: set[str] = set()
        for e in self.entries("/sdapi/v1/sd-models"):
            title = str(e.get("title", ""))
            name = title.rsplit(" [", 1)[0] if title.endswith("]") else title
            short = e.get("hash")
            out |= {title, name, checkpoint_stem(name), str(e.get("model_name", ""))}
            for value in (short, e.get("sha256")):
                if isinstance(value, str) and value:
                    out.add(value)
            if isinstance(short, str) and short:
                out |= {f"{name} [{short}]", f"{checkpoint_stem(name)} [{short}]"}
        return out - {""}

    def upscaler(self, name: object) -> dict[str, Any] | None:
        """The upscaler list's entry for `name` (exact; the SD upscale script also takes
        any case or an index into the list)."""
        entries = self.entries("/sdapi/v1/upscalers")
        if isinstance(name, int) and not isinstance(name, bool):
            return entries[name] if 0 <= name < len(entries) else None
        exact = [e for e in entries if e.get("name") == name]
        folded = [e for e in entries if str(e.get("name", "")).lower() == str(name).lower()]
        return next(iter(exact or folded), None)

    def scripts(self, endpoint: str) -> set[str] | None:
        value = self.get("/sdapi/v1/scripts")
        if not isinstance(value, dict):
            return None
        return {str(s).lower() for s in value.get(endpoint, [])}


def check_a1111(
    server: Server, uses: Sequence[Use], found: Findings, *, local: bool = False
) -> None:
    """`local`: the server runs on this machine, so a weights file it lists can be looked for."""
    lists = Lists(server)
    for use in uses:
        found.problems += [
            f"{use.where}: {p}" for p in a1111_payload_problems(use.payload, use.endpoint)
        ]
        if use.endpoint == "extras":
            _extras(use, lists, found, local)
            continue
        _checkpoints(use, lists, found, local)
        _sampler(use, lists, found)
        _hires(use, lists, found, local)
        _scripts(use, lists, found, local)
        if use.endpoint == "img2img":
            _img2img_steps(use, found)


def _img2img_steps(use: Use, found: Findings) -> None:
    """img2img samples `steps − int(strength × steps) − 1` onwards: at steps 1 that is from
    pure noise whatever the strength below 1, and at strength 0 it is no upscale either."""
    strength = use.payload.get("denoising_strength", 0.75)
    steps = use.payload.get("steps", 50)
    if steps == 1 and isinstance(strength, int | float) and strength < 1:
        found.warnings.append(
            f"{use.where}: img2img at steps 1 starts from pure noise on AUTOMATIC1111 at any "
            f"denoising_strength below 1 (here {strength:g}) and destroys the picture; use "
            'steps of 2 or more, or endpoint = "extras" for an upscale-only pass'
        )
    elif strength == 0:
        found.warnings.append(
            f"{use.where}: img2img at denoising_strength 0 is not a no-op on AUTOMATIC1111 "
            'and can destroy the picture; for an upscale-only pass use endpoint = "extras"'
        )


def _absent(path: str) -> bool:
    """The file is certainly not there (a folder this user may not read says nothing)."""
    try:
        Path(path).stat()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


# Where AUTOMATIC1111 keeps each family's weights, under its models/ folder.
WEIGHT_FOLDERS = (
    ("R-ESRGAN", "RealESRGAN"),
    ("ESRGAN", "ESRGAN"),
    ("SwinIR", "SwinIR"),
    ("DAT", "DAT"),
    ("ScuNET", "ScuNET"),
    ("LDSR", "LDSR"),
)


def _weights(use: Use, key: str, name: object, lists: Lists, found: Findings, local: bool) -> None:
    """An upscaler listed without its weights: a download URL as its `model_path` (or, on
    this machine, a file that is not there). A1111 answers a plain resize for it."""
    entry = lists.upscaler(name)
    path = entry.get("model_path") if entry else None
    if not isinstance(path, str) or not path:
        return  # None, Lanczos, Nearest: built in
    shown = entry.get("name", name) if entry else name
    if path.startswith(("http://", "https://")):
        folder = next((f for p, f in WEIGHT_FOLDERS if str(shown).startswith(p)), "<its kind>")
        found.problems.append(
            f'{use.where}: {key} "{shown}" is listed by AUTOMATIC1111 without its weights (its '
            f"model_path is the download URL {path}): on first use it tries to download them "
            "and, when it cannot, answers HTTP 200 with a plain Lanczos resize; download that "
            f"file into the server's models/{folder}/ folder and restart it (or let it "
            "download once with internet access), or use an upscaler whose weights are there"
        )
    elif local and _absent(path):
        found.problems.append(
            f'{use.where}: {key} "{shown}": its weights {path} (model_path in GET '
            "/sdapi/v1/upscalers) are not on disk; AUTOMATIC1111 would answer a plain resize; "
            "put the file back and restart it, or use another upscaler"
        )


def _upscalers(lists: Lists) -> set[str]:
    return lists.names("/sdapi/v1/upscalers", "name")


def _extras(use: Use, lists: Lists, found: Findings, local: bool) -> None:
    names = _upscalers(lists)
    for key in ("upscaler_1", "upscaler_2"):
        name = use.payload.get(key)
        if isinstance(name, str) and name != "None" and name not in names:
            found.problems.append(
                f'{use.where}: {key} "{name}" is not an upscaler AUTOMATIC1111 has (500 for every '
                f"item); use one of: {', '.join(sorted(names))}"
            )
        elif isinstance(name, str):
            _weights(use, key, name, lists, found, local)


def _checkpoints(use: Use, lists: Lists, found: Findings, local: bool) -> None:
    override = use.payload.get("override_settings")
    override = override if isinstance(override, Mapping) else {}
    name = override.get("sd_model_checkpoint")
    if name is None:
        found.warnings.append(
            f"{use.where}: no override_settings.sd_model_checkpoint: the pass runs on whichever "
            "checkpoint is loaded"
        )
    elif str(name) not in lists.checkpoint_aliases():
        stems = sorted(
            {checkpoint_stem(str(e.get("title", ""))) for e in lists.entries("/sdapi/v1/sd-models")}
        )
        found.problems.append(
            f'{use.where}: override_settings.sd_model_checkpoint "{name}" is not a checkpoint '
            "AUTOMATIC1111 has by that exact name (it would silently keep the loaded one); use "
            f"one of: {', '.join(stems)}"
        )
    upscaler = override.get("upscaler_for_img2img")
    if upscaler is not None and str(upscaler) not in _upscalers(lists):
        found.problems.append(
            f'{use.where}: override_settings.upscaler_for_img2img "{upscaler}" is not an '
            "upscaler AUTOMATIC1111 has (it would silently use Lanczos)"
        )
    elif upscaler is not None:
        _weights(use, "override_settings.upscaler_for_img2img", upscaler, lists, found, local)
    refiner = use.payload.get("refiner_checkpoint")
    if refiner and not _closest(str(refiner), lists):
        found.problems.append(
            f'{use.where}: refiner_checkpoint "{refiner}" matches no checkpoint AUTOMATIC1111 '
            "has (500 for every item); name it as in GET /sdapi/v1/sd-models"
        )


def _closest(name: str, lists: Lists) -> bool:
    """A1111's refiner lookup: an exact alias, else the shortest title containing it."""
    titles = (str(e.get("title", "")) for e in lists.entries("/sdapi/v1/sd-models"))
    return name in lists.checkpoint_aliases() or any(name in t for t in titles)


def _sampler(use: Use, lists: Lists, found: Findings) -> None:
    sampler = use.payload.get("sampler_name")
    samplers = lists.names("/sdapi/v1/samplers", "name")  # the API takes no alias
    suffixes = lists.names("/sdapi/v1/schedulers", "label", "aliases")
    labels = lists.names("/sdapi/v1/schedulers", "name", "label")
    # 1.9+ splits "DPM++ 2M Karras" into a sampler and a scheduler
    combined = {f"{s} {x}" for s in samplers for x in suffixes}
    if isinstance(sampler, str) and samplers and sampler not in samplers | combined:
        found.problems.append(
            f'{use.where}: sampler_name "{sampler}" is not a sampler AUTOMATIC1111 has (it '
            f"would silently use its first one); use one of: {', '.join(sorted(samplers))}"
        )
    scheduler = use.payload.get("scheduler")
    if isinstance(scheduler, str) and labels and scheduler not in labels:
        found.problems.append(
            f'{use.where}: scheduler "{scheduler}" is not one AUTOMATIC1111 has (it would '
            f"silently use Automatic); use one of: {', '.join(sorted(labels))}"
        )


def _hires(use: Use, lists: Lists, found: Findings, local: bool) -> None:
    name = use.payload.get("hr_upscaler")
    if not (use.payload.get("enable_hr") is True and isinstance(name, str)):
        return
    if name not in LATENT_MODES and name not in _upscalers(lists):
        found.problems.append(
            f'{use.where}: hr_upscaler "{name}" is not an upscaler AUTOMATIC1111 has (500 '
            "for every item); use a Latent mode or a name from GET /sdapi/v1/upscalers"
        )
    elif name not in LATENT_MODES:
        _weights(use, "hr_upscaler", name, lists, found, local)


def _scripts(use: Use, lists: Lists, found: Findings, local: bool) -> None:
    installed = lists.scripts(use.endpoint)
    always = use.payload.get("alwayson_scripts")
    for name, spec in always.items() if isinstance(always, Mapping) else []:
        if installed is not None and str(name).lower() not in installed:
            found.problems.append(
                f'{use.where}: alwayson_scripts "{name}" is not installed on AUTOMATIC1111 '
                "(422 for every item); install the extension or remove it"
            )
        elif str(name).lower() == "controlnet" and isinstance(spec, Mapping):
            _controlnet(use, spec.get("args"), lists, found)
    script = use.payload.get("script_name")
    if isinstance(script, str) and script:
        if installed is not None and script.lower() not in installed:
            found.problems.append(
                f'{use.where}: script_name "{script}" is not installed on AUTOMATIC1111 (422 '
                "for every item)"
            )
        elif script.lower() == "sd upscale":
            _sd_upscale(use, use.payload.get("script_args"), lists, found, local)


def _controlnet(use: Use, units: Any, lists: Lists, found: Findings) -> None:
    models = lists.get("/controlnet/model_list")
    models = models.get("model_list") if isinstance(models, dict) else None
    modules = lists.get("/controlnet/module_list")
    modules = modules.get("module_list") if isinstance(modules, dict) else None
    dropped = "AUTOMATIC1111 would silently run without ControlNet"
    for i, unit in enumerate(units if isinstance(units, list) else []):
        if not isinstance(unit, Mapping):
            continue
        key = f"alwayson_scripts.controlnet.args[{i}]"
        if unit.get("enabled") is not True:
            found.problems.append(
                f"{use.where}: {key}.enabled is not true (default false); {dropped}"
            )
        model = unit.get("model")
        if isinstance(models, list) and model not in models:
            found.problems.append(
                f'{use.where}: {key}.model "{model}" is not in GET /controlnet/model_list by '
                f"that exact name and hash; {dropped}; use one of: {', '.join(map(str, models))}"
            )
        module = unit.get("module")
        if isinstance(modules, list) and module is not None and module not in modules:
            found.problems.append(f'{use.where}: {key}.module "{module}" is unknown; {dropped}')


def _sd_upscale(use: Use, args: Any, lists: Lists, found: Findings, local: bool) -> None:
    """script_args = [info, overlap, upscaler name or index, scale]."""
    if not isinstance(args, list) or len(args) < 4:
        found.problems.append(
            f'{use.where}: script_args for SD upscale are ["", overlap, upscaler, scale]'
        )
        return
    upscaler, names = args[2], _upscalers(lists)
    known = {n.lower() for n in names}
    if isinstance(upscaler, str) and upscaler.lower() not in known:
        found.problems.append(
            f'{use.where}: script_args[2] "{upscaler}" is not an upscaler AUTOMATIC1111 has '
            "(500 for every item)"
        )
    else:
        _weights(use, "script_args[2] (the SD upscale upscaler)", upscaler, lists, found, local)
