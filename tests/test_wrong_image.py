"""No wrong image lands (issue 21): answers that are not what was asked for fail their item
with a reason, against loopback servers that answer as the real ones do.

Real daemons (`emif run --once`, `emif check`) against tests/sdapi_server.py: a destroyed
picture of the right size, an upscaler listed without its weights, a grid put first, an
`info` that cannot be read, a redirect to another host, a refiner that never switched in.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from emif_daemon.config.schema import load_config
from emif_daemon.servers.answer_checks import a1111_info_problem
from emif_daemon.servers.dialects import a1111_payload_problems
from emif_daemon.servers.preflight.check import check
from emif_daemon.servers.preflight.checklist import Use
from emif_daemon.servers.sdapi import Server, parse_answer
from emif_daemon.stages.upscale import item_seed
from tests import fake_drawthings, sdapi_server
from tests.helpers import REPO, fast_sections, log_lines, run_emif, serving, write_config

pytestmark = pytest.mark.slow

SMALL_DT: dict[str, Any] = {"width": 128, "height": 128, "steps": 4, "loras": [], "controls": []}
DT_PASSES: list[dict[str, Any]] = [
    {"strength": 0.0, "upscaler": "4x_ultrasharp_f16.ckpt", "upscaler_scale": 2, "steps": 1},
    {"strength": 0.3, "steps": 4},
]
SMALL_A1: dict[str, Any] = {"width": 128, "height": 128, "steps": 4, "sampler_name": "Euler"}


def config(
    root: Path,
    url: str,
    payload: dict[str, Any],
    passes: list[dict[str, Any]],
    **sections: dict[str, Any],
) -> Path:
    merged = fast_sections(
        root, server={"url": url, "backoff_s": 0.05, "read_timeout_s": 30}, **sections
    )
    extra = "[generate.payload]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in payload.items())
    if passes:
        extra += "[upscale]\nexpect_size = [256, 256]\n"
        for p in passes:
            extra += "[[upscale.passes]]\n" + "".join(
                f"{k} = {json.dumps(v)}\n" for k, v in p.items()
            )
    else:
        extra += "[upscale]\nenabled = false\n"
    return write_config(root.parent / "config.toml", merged, extra)


def enqueue(root: Path, count: int, seed: int = 1, payload: dict[str, Any] | None = None) -> None:
    job: dict[str, Any] = {
        "nation": "N",
        "category": "family",
        "prompt": "a family",
        "count": count,
    }
    if payload:
        job["payload"] = payload
    doc = {"defaults": {"seed": seed}, "jobs": [job]}
    (root / "queue" / "jobs.json").write_text(json.dumps(doc))


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def failures(root: Path, stage: str) -> dict[str, dict[str, Any]]:
    folder = root / ".emif" / "failed" / stage
    return {p.stem: json.loads(p.read_text()) for p in folder.rglob("*.json")}


# -- the content check, through the daemon ---------------------------------------------------


@pytest.mark.parametrize("kind", ["blobs", "flat", "blurred", "onecolour", "noise"])
def test_a_destroyed_pass_answer_fails_the_item_naming_the_pass_and_its_scores(
    root: Path, kind: str
) -> None:
    """The answer is a valid PNG of the right size, as a ruined real one is."""
    with serving("drawthings") as server:
        cfg = config(root, server.url, SMALL_DT, DT_PASSES)
        enqueue(root, 1)
        assert (
            run_emif("run", "--once", "--stages", "generate", "--config", str(cfg)).returncode == 0
        )
        source = pngs(root / "GENERATIONS")[0]
        seed = item_seed(hashlib.sha256(source.read_bytes()).hexdigest())
        server.state.fault("ok", kind, seed=seed)  # pass 1 keeps it, pass 2 ruins it
        result = run_emif("run", "--once", "--config", str(cfg))
        sent = [r for r in server.state.generations() if r.path == "img2img"]
    assert result.returncode == 1
    assert pngs(root / "UPSCALED_IMAGES") == []
    assert [sdapi_server.png_dims(r.images[0]) for r in sent] == [(256, 256), (256, 256)]
    (record,) = failures(root, "upscale").values()
    reason = record["reason"]
    assert reason.startswith("pass 2 ([upscale.passes[1]] of the config) did not return its ")
    assert "upscale.min_detail_ratio 0.5" in reason or "upscale.min_resemblance 0.5" in reason
    assert record["attempts"] == 1


def test_a_kept_picture_passes_and_its_scores_and_seed_are_in_the_sidecar(root: Path) -> None:
    with serving("drawthings") as server:
        cfg = config(root, server.url, SMALL_DT, DT_PASSES)
        enqueue(root, 2)
        result = run_emif("run", "--once", "--config", str(cfg))
        sent = [r for r in server.state.generations() if r.path == "img2img"]
    assert result.returncode == 0, result.stderr[-2000:]
    seeds = set()
    for output in pngs(root / "UPSCALED_IMAGES"):
        sidecar = json.loads(output.with_suffix(".json").read_text())
        assert sidecar["seed"] == item_seed(sidecar["source_sha256"])
        assert [p["seed"] for p in sidecar["passes"]] == [sidecar["seed"]] * 2
        assert len(sidecar["content_check"]) == 2
        for scores in sidecar["content_check"]:
            assert scores["resemblance"] > 0.9
            assert scores["detail_ratio"] > 0.8
        seeds.add(sidecar["seed"])
    assert len(seeds) == 2  # no two images of the data set get the same noise
    assert {r.payload["seed"] for r in sent} == seeds


def test_a_pass_that_pins_its_seed_keeps_it(root: Path) -> None:
    with serving("drawthings") as server:
        cfg = config(root, server.url, SMALL_DT, [DT_PASSES[0], {**DT_PASSES[1], "seed": 7}])
        enqueue(root, 2)
        assert run_emif("run", "--once", "--config", str(cfg)).returncode == 0
        sent = [r for r in server.state.generations() if r.path == "img2img"]
    assert sorted(r.payload["seed"] for r in sent if r.payload["strength"] == 0.3) == [7, 7]
    assert len({r.payload["seed"] for r in sent if r.payload["strength"] == 0.0}) == 2


@pytest.mark.parametrize("kind", ["flat", "onecolour"])
def test_a_txt2img_answer_that_is_no_picture_fails_the_item(root: Path, kind: str) -> None:
    with serving("drawthings") as server:
        cfg = config(root, server.url, SMALL_DT, [])
        enqueue(root, 1, seed=5)
        server.state.fault(kind, seed=5)
        result = run_emif("run", "--once", "--config", str(cfg))
    assert result.returncode == 1
    assert pngs(root / "GENERATIONS") == []
    (record,) = failures(root, "generate").values()
    assert record["reason"].startswith("image 1 of the txt2img answer ([generate.payload] of the")
    assert ("one colour" if kind == "onecolour" else "it is flat") in record["reason"]


# -- AUTOMATIC1111: weights, grids, info, redirects, nulls, the refiner ------------------------


def a1111_example(work: Path, url: str, upscaler: str) -> Path:
    """examples/a1111.toml against `url`, its extras pass using `upscaler`."""
    work.mkdir()
    text = (REPO / "examples" / "a1111.toml").read_text().replace("http://127.0.0.1:7860", url)
    text = text.replace('root = "../pipeline"', 'root = "pipeline"')
    text = text.replace('upscaler_1 = "4x-UltraSharp"', f'upscaler_1 = "{upscaler}"')
    text = text.replace("[segment]\n", "[segment]\nenabled = false\n", 1)
    cfg = work / "a1111.toml"
    cfg.write_text(text + '\n[watch]\nmode = "poll"\nsettle_s = 0\n')
    assert run_emif("init", "--config", str(cfg)).returncode == 0
    return cfg


def test_check_refuses_an_extras_upscaler_listed_without_weights_and_run_lands_none(
    tmp_path: Path,
) -> None:
    with serving("a1111") as server:
        cfg = a1111_example(tmp_path / "w", server.url, "R-ESRGAN 4x+")
        root = cfg.parent / "pipeline"
        enqueue(root, 1)
        checked = run_emif("check", "--config", str(cfg))
        result = run_emif("run", "--once", "--config", str(cfg), timeout=300)
        paths = [r.path for r in server.state.generations()]
    assert checked.returncode == 1
    (line,) = [s for s in checked.stdout.splitlines() if "R-ESRGAN 4x+" in s]
    assert line.startswith('upscale: [upscale.passes[0]] of the config: upscaler_1 "R-ESRGAN 4x+" ')
    assert "without its weights" in line
    assert "https://github.com/xinntao/Real-ESRGAN/releases/download/" in line
    assert "models/RealESRGAN/" in line
    assert "generate: ok" in checked.stdout
    assert result.returncode == 1
    assert len(pngs(root / "GENERATIONS")) == 1
    assert pngs(root / "UPSCALED_IMAGES") == []
    assert "extra-single-image" not in paths  # nothing was sent for it
    off = [e for e in log_lines(root) if e["event"] == "stage_unavailable"]
    assert [e["stage"] for e in off] == ["upscale"]


# the pass, its endpoint, and the key the problem names
UPSCALER_FIELDS: dict[str, tuple[dict[str, Any], str, str]] = {
    "extras": ({"upscaler_1": "SwinIR 4x", "upscaling_resize": 2}, "extras", "upscaler_1"),
    "hires": (
        {"enable_hr": True, "hr_upscaler": "ESRGAN_4x", **SMALL_A1},
        "txt2img",
        "hr_upscaler",
    ),
    "img2img": (
        {"override_settings": {"upscaler_for_img2img": "DAT x4"}, **SMALL_A1},
        "img2img",
        "override_settings.upscaler_for_img2img",
    ),
    "sd upscale": (
        {"script_name": "SD upscale", "script_args": ["", 64, "scunet gan", 2.0], **SMALL_A1},
        "img2img",
        "script_args[2] (the SD upscale upscaler)",
    ),
}


@pytest.mark.parametrize("field", sorted(UPSCALER_FIELDS))
def test_every_upscaler_field_a1111_uses_is_checked_for_its_weights(field: str) -> None:
    payload, endpoint, key = UPSCALER_FIELDS[field]
    with serving("a1111") as fake:
        server = Server(fake.url, connect_timeout=2, read_timeout=10)
        found = check(server, [Use("pass", payload, endpoint)], models_folders=[])
        fake.state.a1111.upscaler_paths["4x-UltraSharp"] = "/nowhere/4x-UltraSharp.pth"
        local = check(
            server, [Use("pass", {"upscaler_1": "4x-UltraSharp"}, "extras")], models_folders=[]
        )
    (problem,) = [p for p in found.problems if "without its weights" in p]
    assert problem.startswith(f"pass: {key} ")
    assert "model_path is the download URL https://" in problem
    (missing,) = local.problems
    assert "its weights /nowhere/4x-UltraSharp.pth (model_path in GET" in missing


def test_a_saved_batch_publishes_its_two_images_never_the_grid(root: Path) -> None:
    with serving("a1111") as server:
        payload = {**SMALL_A1, "batch_size": 2, "save_images": True}
        cfg = config(root, server.url, payload, [])
        enqueue(root, 1)
        result = run_emif("run", "--once", "--config", str(cfg))
        (rec,) = server.state.generations()
    assert result.returncode == 0, result.stderr[-2000:]
    made = pngs(root / "GENERATIONS")
    assert [p.name for p in made] == ["N_family_1_1.png", "N_family_1_2.png"]
    assert [p.read_bytes() for p in made] == rec.images  # the real ones, in order
    assert {sdapi_server.png_dims(p.read_bytes()) for p in made} == {(128, 128)}


@pytest.mark.parametrize("fault", ["noinfo", "badinfo"])
def test_an_a1111_answer_whose_info_cannot_be_read_fails_the_item(root: Path, fault: str) -> None:
    with serving("a1111") as server:
        cfg = config(root, server.url, SMALL_A1, [])
        enqueue(root, 1, seed=3)
        server.state.fault(fault, seed=3)
        result = run_emif("run", "--once", "--config", str(cfg))
    assert result.returncode == 1
    (record,) = failures(root, "generate").values()
    words = "has no `info`" if fault == "noinfo" else "has an `info` that is not JSON"
    assert f"AUTOMATIC1111's answer {words}" in record["reason"]
    assert "cannot be checked" in record["reason"]


def test_a_307_on_txt2img_sends_nothing_to_the_other_host(root: Path) -> None:
    with serving("a1111") as server, serving("a1111") as other:
        where = f"{other.url}/sdapi/v1/txt2img"
        server.state.redirects["/sdapi/v1/txt2img"] = (307, where)
        cfg = config(root, server.url, SMALL_A1, [])
        enqueue(root, 1)
        result = run_emif("run", "--once", "--config", str(cfg))
        reached = list(other.state.requests)
    assert result.returncode == 1
    assert reached == []
    (record,) = failures(root, "generate").values()
    assert f"answered HTTP 307, redirecting to {where}" in record["reason"]
    assert "never follows a redirect" in record["reason"]
    assert record["attempts"] == 1


def test_a_302_on_the_options_probe_sends_nothing_to_the_other_host(root: Path) -> None:
    with serving("a1111") as server, serving("a1111") as other:
        where = f"{other.url}/sdapi/v1/options"
        server.state.redirects["/sdapi/v1/options"] = (302, where)
        cfg = config(root, server.url, SMALL_A1, [])
        enqueue(root, 1)
        checked = run_emif("check", "--config", str(cfg))
        result = run_emif("run", "--once", "--config", str(cfg))
        reached = list(other.state.requests)
        sent = server.state.generations()
    assert reached == []
    assert sent == []
    assert checked.returncode == 1
    assert f"answered HTTP 302, redirecting to {where}" in checked.stdout
    assert result.returncode == 1
    off = [e for e in log_lines(root) if e["event"] == "stage_unavailable"]
    assert f"redirecting to {where}" in off[0]["reason"]


def test_a_refiner_that_never_switched_in_names_the_steps_and_switch_point(root: Path) -> None:
    with serving("a1111") as server:
        payload = {
            **SMALL_A1,
            "steps": 1,
            "refiner_checkpoint": "sd_xl_refiner_1.0",
            "refiner_switch_at": 0.7,
        }
        cfg = config(root, server.url, payload, [])
        enqueue(root, 1)
        result = run_emif("run", "--once", "--config", str(cfg))
    assert result.returncode == 1
    (record,) = failures(root, "generate").values()
    reason = record["reason"]
    assert 'refiner "sd_xl_refiner_1.0" switching in at refiner_switch_at 0.7' in reason
    assert "with 1 steps no sampling step reached 0.7" in reason
    assert "raise steps" in reason


def test_the_preflight_warns_for_img2img_at_steps_1_at_any_strength() -> None:
    with serving("a1111") as fake:
        server = Server(fake.url, connect_timeout=2, read_timeout=10)
        uses = [
            Use(f"pass {s}", {**SMALL_A1, "steps": 1, "denoising_strength": s}, "img2img")
            for s in (0.0, 0.3, 0.75)
        ]
        found = check(server, uses, models_folders=[])
    for s in (0.0, 0.3, 0.75):
        (warning,) = [w for w in found.warnings if w.startswith(f"pass {s}: img2img")]
        assert "at steps 1 starts from pure noise" in warning
        assert f"(here {s:g})" in warning


def test_null_is_refused_for_a1111_where_payloads_are_validated(tmp_path: Path) -> None:
    problems = a1111_payload_problems(
        {"width": None, "override_settings": {"sd_vae": None}, "steps": 20}, "txt2img"
    )
    assert len(problems) == 2
    assert problems[0].startswith("width: null is not sent to AUTOMATIC1111")
    assert problems[1].startswith("override_settings.sd_vae: null")
    root = tmp_path / "root"
    cfg = config(root, "http://127.0.0.1:9", {**SMALL_A1, "send_images": True}, [])
    assert load_config(cfg).generate.payload["send_images"] is True
    jobs = tmp_path / "jobs.json"
    enqueue_doc = {
        "jobs": [{"nation": "N", "category": "family", "prompt": "p", "payload": {"height": None}}]
    }
    jobs.write_text(json.dumps(enqueue_doc))
    result = run_emif("validate", str(jobs), "--config", str(cfg))
    assert result.returncode == 1
    assert "jobs[0].payload.height: null is not sent to AUTOMATIC1111" in result.stdout


def test_parse_answer_reads_the_grid_offset_and_why_info_is_unreadable() -> None:
    images = ["grid", "one", "two", "map"]
    import base64  # noqa: PLC0415

    texts = [base64.b64encode(t.encode()).decode() for t in images]
    info = json.dumps({"index_of_first_image": 1})
    answer = parse_answer({"images": texts, "info": info}, 2, 0.0)
    assert answer.images == [b"one", b"two"]
    assert answer.extra_images == 1
    bare = parse_answer({"images": texts}, 2, 0.0)
    assert (bare.images, bare.info, bare.info_error) == ([b"grid", b"one"], None, "has no `info`")
    assert a1111_info_problem({}, None, bare.info_error) is not None
    odd = parse_answer({"images": texts, "info": "[1]"}, 1, 0.0)
    assert odd.info_error == "has an `info` that is not a JSON object (list)"


# -- Draw Things: names not verified, and the app's registries -------------------------------


def shipped_dt(work: Path, url: str, models: Path, extra: str = "") -> Path:
    """config.toml as shipped, against `url`, with `models` as Draw Things' models folder."""
    work.mkdir()
    (work / "recipes").symlink_to(REPO / "recipes")
    text = (REPO / "config.toml").read_text().replace("http://127.0.0.1:7860", url)
    text = text.replace('root = "../pipeline"', 'root = "pipeline"')
    line = 'models_folders = ["~/Library/Containers/com.liuliu.draw-things/Data/Documents/Models"]'
    assert line in text
    text = text.replace(line, f"models_folders = [{json.dumps(str(models))}]")
    text = text.replace("[segment]\nenabled = true", "[segment]\nenabled = false")
    text = text.replace('mode = "auto"', 'mode = "poll"').replace("settle_s = 2 ", "settle_s = 0 ")
    cfg = work / "config.toml"
    cfg.write_text(text + extra)
    assert run_emif("init", "--config", str(cfg)).returncode == 0
    return cfg


SHIPPED_NAMES = {  # stage → every name the shipped recipes give Draw Things
    "generate": {"model": "sd_xl_base_1.0_f16.ckpt", "refiner_model": "sd_xl_refiner_1.0_f16.ckpt"},
    "upscale": {
        "model": "juggernaut_xl_v9_q6p_q8p.ckpt",
        "upscaler": "4x_ultrasharp_f16.ckpt",
        "controls[0].file": "controlnet_xinsir_union_promax_sdxl_1.0_f16.ckpt",
    },
}


def test_check_says_not_verified_per_name_and_fails_unless_allowed(tmp_path: Path) -> None:
    with serving("drawthings") as server:
        cfg = shipped_dt(tmp_path / "w", server.url, tmp_path / "no such folder")
        strict = run_emif("check", "--config", str(cfg))
        allowed = run_emif("check", "--allow-unverified", "--config", str(cfg))
    assert strict.returncode == 1
    assert allowed.returncode == 0, allowed.stdout
    for stage, names in SHIPPED_NAMES.items():
        for key, name in names.items():
            lines = [
                line
                for line in strict.stdout.splitlines()
                if line.startswith(f"{stage}: ") and f'{key} "{name}": not verified' in line
            ]
            assert len(lines) >= 1, (stage, key, strict.stdout)
            assert "server.models_folders" in lines[0]
    assert "ok (" not in strict.stdout
    assert "name(s) not verified)" in allowed.stdout


def test_the_daemon_warns_once_per_unverified_name(tmp_path: Path) -> None:
    with serving("drawthings") as server:
        cfg = shipped_dt(tmp_path / "w", server.url, tmp_path / "no such folder")
        root = cfg.parent / "pipeline"
        enqueue(root, 2)
        result = run_emif("run", "--once", "--stages", "generate", "--config", str(cfg))
    assert result.returncode == 0, result.stderr[-2000:]
    said = [e["warning"] for e in log_lines(root) if e["event"] == "preflight_unverified"]
    assert len(said) == len(set(said)) == 2  # the model and the refiner, once each
    assert all("not verified" in w for w in said)


def test_the_other_mac_case_names_the_server() -> None:
    from emif_daemon.servers.preflight.check import _folders  # noqa: PLC0415

    folders, why = _folders("http://studio-mac.local:7860", ["/tmp"])
    assert folders is None
    assert "Draw Things runs on another machine (http://studio-mac.local:7860)" in why


@pytest.mark.parametrize(
    ("case", "words"),
    [
        (
            "unregistered controlnet",
            'controls[0].file "controlnet_xinsir_union_promax_sdxl_1.0'
            '_f16.ckpt" is not built into Draw Things and it is not in custom_controlnet.json',
        ),
        (
            "unreadable entry",
            "its entry in custom_controlnet.json cannot be read: it has no "
            '"global_average_pooling"',
        ),
        (
            "unregistered model",
            'model "juggernaut_xl_v9_q6p_q8p.ckpt" is not built into Draw '
            "Things and it is not in custom.json",
        ),
    ],
)
def test_check_reads_the_apps_registries_for_every_name(
    tmp_path: Path, case: str, words: str
) -> None:
    xinsir = fake_drawthings.XINSIR_UNION
    with serving("drawthings") as server:
        app = server.state.app
        app.use_folder(tmp_path / "Models")
        if case == "unregistered controlnet":
            app.unregister("controlnet", xinsir["file"])
        elif case == "unreadable entry":
            app.unregister("controlnet", xinsir["file"])
            broken = {k: v for k, v in xinsir.items() if k != "global_average_pooling"}
            (tmp_path / "Models" / "custom_controlnet.json").write_text(json.dumps([broken]))
        else:
            app.unregister("model", "juggernaut_xl_v9_q6p_q8p.ckpt")
        cfg = shipped_dt(tmp_path / "w", server.url, tmp_path / "Models")
        checked = run_emif("check", "--config", str(cfg))
    assert checked.returncode == 1
    (line,) = [s for s in checked.stdout.splitlines() if words in s]
    assert line.startswith("upscale: recipes/drawthings-juggernaut-tile.json (upscale.passes[1])")
    assert "download it from Draw Things' model list" in line
    assert "generate: ok" in checked.stdout


def test_a_lora_for_another_model_version_is_refused(tmp_path: Path) -> None:
    with serving("drawthings") as server:
        app = server.state.app
        app.use_folder(tmp_path / "Models")
        app.install("lora", fake_drawthings.MORE_DETAILS)  # an SD 1.5 LoRA
        app.install("lora", fake_drawthings.SDXL_RENDER, register=False)
        lora = fake_drawthings.MORE_DETAILS["file"]
        loose = fake_drawthings.SDXL_RENDER["file"]
        server_ = Server(server.url, connect_timeout=2, read_timeout=10)
        loras = [{"file": lora, "weight": 0.6}, {"file": loose, "weight": 1}]
        payload = {**SMALL_DT, "model": "sd_xl_base_1.0_f16.ckpt", "loras": loras}
        found = check(
            server_, [Use("generate", payload, "txt2img")], models_folders=[tmp_path / "Models"]
        )
    registered, unregistered = found.problems
    assert registered.startswith(f'generate: loras[0].file "{lora}" is for v1 models, not ')
    assert f'loras[1].file "{loose}" is not in custom_lora.json, so the app takes it for a v1' in (
        unregistered
    )


def test_the_creative_upscale_recipe_runs_as_the_community_script_does(tmp_path: Path) -> None:
    """recipes/drawthings-creative-upscale-sd15.json on a Mac that downloaded what the
    script downloads: Juggernaut Reborn, its three LoRAs, the SD 1.5 tile ControlNet."""
    extra = "".join(
        f'\n[[upscale.passes]]\ninclude = "recipes/drawthings-{name}.json"\n'
        for name in ("upscale-ultrasharp", "creative-upscale-sd15")
    )
    with serving("drawthings") as server:
        app = server.state.app
        app.use_folder(tmp_path / "Models")
        app.install("model", fake_drawthings.JUGGERNAUT_REBORN)
        app.install("lora", fake_drawthings.MORE_DETAILS)
        app.install("lora", fake_drawthings.SDXL_RENDER)
        app.files.add("tcd_sd_v1.5_lora_f16.ckpt")
        (tmp_path / "Models" / "tcd_sd_v1.5_lora_f16.ckpt").write_bytes(b"")
        cfg = shipped_dt(tmp_path / "w", server.url, tmp_path / "Models")
        text = cfg.read_text()
        passes = text.index("[[upscale.passes]]")
        cfg.write_text(text[:passes] + text[text.index("[segment]") :] + extra)
        checked = run_emif("check", "--config", str(cfg))
        root = cfg.parent / "pipeline"
        enqueue(root, 1)
        result = run_emif("run", "--once", "--config", str(cfg), timeout=300)
        creative = [r for r in server.state.generations() if r.payload.get("strength") == 0.4]
    assert checked.returncode == 0, checked.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    (rec,) = creative
    assert rec.applied["model"] == "juggernaut_reborn_q6p_q8p.ckpt"
    assert rec.applied["loras"] == [
        fake_drawthings.MORE_DETAILS["file"],
        fake_drawthings.SDXL_RENDER["file"],
        "tcd_sd_v1.5_lora_f16.ckpt",
    ]
    assert rec.applied["controls"] == ["controlnet_tile_1.x_v1.1_f16.ckpt"]
    assert rec.dropped == []
    assert rec.app_values == {}
    sidecar = json.loads(pngs(root / "UPSCALED_IMAGES")[0].with_suffix(".json").read_text())
    assert sidecar["recipes"] == [
        "recipes/drawthings-upscale-ultrasharp.json",
        "recipes/drawthings-creative-upscale-sd15.json",
    ]
