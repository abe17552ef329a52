"""The shipped recipes against servers that behave like the real ones, and a daemon that
notices when a server does not do what a recipe says (docs/servers.md).

Every test here runs real daemons (`emif run`, `emif check`) against the loopback servers of
tests/sdapi_server.py, which record what each request really applied and what was dropped.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests import sdapi_server
from tests.helpers import (
    REPO,
    emif_cmd,
    fast_sections,
    log_lines,
    run_emif,
    serving,
    spawn,
    wait_for,
    write_config,
)

SMALL_DT = {"width": 128, "height": 128, "steps": 4, "loras": [], "controls": []}
UNION = "controlnet_xinsir_union_promax_sdxl_1.0_f16.ckpt"
TILE_A1111 = "ttplanetSDXLControlnet_v20Fp16 [c8f29e1e]"

# The A1111 example as shipped before: pass 1 is img2img at denoising strength 0.
OLD_A1111_EXAMPLE = """
[paths]
root = "pipeline"
[server]
url = "URL"
[generate.payload]
override_settings = { sd_model_checkpoint = "sd_xl_base_1.0.safetensors" }
override_settings_restore_afterwards = false
refiner_checkpoint = "sd_xl_refiner_1.0.safetensors"
refiner_switch_at = 0.7
width = 768
height = 768
enable_hr = true
hr_resize_x = 1024
hr_resize_y = 1024
hr_upscaler = "Latent"
hr_second_pass_steps = 15
denoising_strength = 0.5
steps = 30
cfg_scale = 7.0
sampler_name = "DPM++ 2M"
scheduler = "Karras"
batch_size = 1
n_iter = 1
restore_faces = false
send_images = true
save_images = false
[upscale]
expect_size = [2048, 2048]
[[upscale.passes]]
prompt = ""
width = 2048
height = 2048
resize_mode = 0
denoising_strength = 0.0
steps = 1
override_settings = { upscaler_for_img2img = "4x-UltraSharp" }
send_images = true
save_images = false
[[upscale.passes]]
prompt = "masterpiece, best quality, highres, photographic, sharp"
override_settings = { sd_model_checkpoint = "juggernautXL_v9.safetensors" }
override_settings_restore_afterwards = false
denoising_strength = 0.3
steps = 30
cfg_scale = 6.0
sampler_name = "DPM++ 2M"
scheduler = "Karras"
send_images = true
save_images = false
[upscale.passes.alwayson_scripts.controlnet]
args = [{ enabled = true, module = "tile_resample", model = "ttplanetSDXLControlnet_v20Fp16 [c8f29e1e]", weight = 0.5, guidance_start = 0.0, guidance_end = 1.0, control_mode = "Balanced", resize_mode = "Crop and Resize", pixel_perfect = true, save_detected_map = false }]
[segment]
enabled = false
[watch]
mode = "poll"
settle_s = 0
"""  # noqa: E501


def shipped(work: Path, name: str, url: str, models: Path | None = None) -> Path:
    """A copy of a shipped config (with the recipes) talking to `url`: segment off, file
    events off, and Draw Things' models folder `models`."""
    shutil.copytree(REPO / "recipes", work / "recipes")
    (work / "examples").mkdir()
    text = (REPO / name).read_text().replace("http://127.0.0.1:7860", url)
    text = text.replace('root = "../pipeline"', 'root = "pipeline"')
    if "[segment]\nenabled = true" in text:
        text = text.replace("[segment]\nenabled = true", "[segment]\nenabled = false")
    else:
        text = text.replace("[segment]\n", "[segment]\nenabled = false\n", 1)
    text = text.replace('mode = "auto"', 'mode = "poll"').replace("settle_s = 2 ", "settle_s = 0 ")
    if models is not None:
        line = (
            'models_folders = ["~/Library/Containers/com.liuliu.draw-things/Data/Documents/Models"]'
        )
        assert line in text
        text = text.replace(line, f"models_folders = [{json.dumps(str(models))}]")
    cfg = work / name
    cfg.write_text(text)
    assert run_emif("init", "--config", str(cfg)).returncode == 0
    return cfg


def prompts(
    root: Path, nations: list[str], per: int, payload: dict[str, Any] | None = None
) -> None:
    jobs: list[dict[str, Any]] = [
        {"nation": n, "category": c, "prompt": f"a {c} in {n}", "count": per}
        for n in nations
        for c in ("family", "working")
    ]
    if payload:  # the first job, with a seed of its own (faults are queued by seed)
        jobs[0].update(payload=payload, seed=100)
    (root / "queue" / "jobs.json").write_text(json.dumps({"defaults": {"seed": 1}, "jobs": jobs}))


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def size_of(path: Path) -> tuple[int, int]:
    return sdapi_server.png_dims(path.read_bytes())


def failures(root: Path, stage: str) -> dict[str, dict[str, Any]]:
    folder = root / ".emif" / "failed" / stage
    return {
        p.relative_to(folder).as_posix(): json.loads(p.read_text()) for p in folder.rglob("*.json")
    }


# -- the shipped set-up does on each server what it says -------------------------------------


def test_shipped_config_and_recipes_on_draw_things_apply_every_named_file(tmp_path: Path) -> None:
    with serving("drawthings") as server:
        server.state.app.use_folder(tmp_path / "Models")
        cfg = shipped(tmp_path / "dt", "config.toml", server.url, tmp_path / "Models")
        root = cfg.parent / "pipeline"
        prompts(root, ["Italy", "Japan", "Perú"], per=2)
        result = run_emif("run", "--once", "--config", str(cfg), timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    made, ups = pngs(root / "GENERATIONS"), pngs(root / "UPSCALED_IMAGES")
    assert len(made) == 12
    assert len(ups) == 12
    assert {size_of(p) for p in made} == {(1024, 1024)}
    assert {size_of(p) for p in ups} == {(2048, 2048)}
    gens = server.state.generations()
    txt = [r for r in gens if r.path == "txt2img"]
    first = [r for r in gens if r.path == "img2img" and r.payload["strength"] == 0.0]
    tile = [r for r in gens if r.path == "img2img" and r.payload["strength"] == 0.3]
    assert (len(txt), len(first), len(tile)) == (12, 12, 12)
    for r in txt:
        assert r.applied["model"] == "sd_xl_base_1.0_f16.ckpt"
        assert r.applied["refiner_model"] == "sd_xl_refiner_1.0_f16.ckpt"
        assert r.applied["hires_fix"] is True
        assert r.applied["upscaler"] is None
    for r in first:
        assert (r.applied["upscaler"], r.applied["upscale_factor"]) == ("4x_ultrasharp_f16.ckpt", 2)
        assert r.applied["size"] == [2048, 2048]
    for r in tile:
        assert r.applied["model"] == "juggernaut_xl_v9_q6p_q8p.ckpt"
        assert r.applied["controls"] == [UNION]
    assert all(r.status == 200 for r in gens)
    assert [r.dropped for r in gens if r.dropped] == []  # nothing silently left out
    assert [r.app_values for r in gens if r.app_values] == []  # nothing from the app window
    events = log_lines(root)
    assert {e["stage"] for e in events if e["event"] == "preflight_ok"} == {"generate", "upscale"}
    assert not [e for e in events if e["event"] == "preflight_warning"]


def test_a1111_example_applies_every_named_model_upscaler_and_controlnet(tmp_path: Path) -> None:
    with serving("a1111") as server:
        cfg = shipped(tmp_path / "a1", "examples/a1111.toml", server.url)
        root = cfg.parent / "pipeline"
        prompts(root, ["Italy", "Japan", "Perú"], per=2)
        result = run_emif("run", "--once", "--config", str(cfg), timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    assert len(pngs(root / "GENERATIONS")) == 12
    ups = pngs(root / "UPSCALED_IMAGES")
    assert len(ups) == 12
    assert {size_of(p) for p in ups} == {(2048, 2048)}
    gens = server.state.generations()
    txt = [r for r in gens if r.path == "txt2img"]
    extras = [r for r in gens if r.path == "extra-single-image"]
    tile = [r for r in gens if r.path == "img2img"]
    assert (len(txt), len(extras), len(tile)) == (12, 12, 12)
    for r in txt:
        assert r.applied["model"] == "sd_xl_base_1.0.safetensors"
        assert r.applied["refiner"] == "sd_xl_refiner_1.0.safetensors"
        assert r.applied["size"] == [1024, 1024]
    for r in extras:
        assert r.applied == {"upscaler": "4x-UltraSharp", "size": [2048, 2048]}
    for r in tile:
        assert r.applied["model"] == "SDXL/juggernautXL_v9.safetensors"  # from a subfolder
        assert r.applied["controlnet"] == [TILE_A1111]
        assert (r.applied["sampler"], r.applied["scheduler"]) == ("DPM++ 2M", "Karras")
    assert all(r.status == 200 for r in gens)
    assert [r.dropped for r in gens if r.dropped] == []


def test_old_a1111_example_strength_zero_pass_fails_every_upscale_naming_the_pass(
    tmp_path: Path,
) -> None:
    """Its checkpoint names match only files at the top of models/Stable-diffusion: here they
    are, so what is left is the strength-0 img2img pass, which starts from noise."""
    with serving("a1111") as server:
        for ck in server.state.a1111.checkpoints:
            ck.name = ck.name.rsplit("/", 1)[-1]
        cfg = tmp_path / "old.toml"
        cfg.write_text(OLD_A1111_EXAMPLE.replace("URL", server.url))
        assert run_emif("init", "--config", str(cfg)).returncode == 0
        root = tmp_path / "pipeline"
        prompts(root, ["Italy"], per=2)
        result = run_emif("run", "--once", "--config", str(cfg), timeout=300)
    assert result.returncode == 1
    assert len(pngs(root / "GENERATIONS")) == 4
    assert pngs(root / "UPSCALED_IMAGES") == []
    failed = failures(root, "upscale")
    assert len(failed) == 4
    for record in failed.values():
        assert record["reason"].startswith(
            "pass 1 ([upscale.passes[0]] of the config) did not return its input's picture"
        )
        assert record["attempts"] == 1
    assert all(
        r.applied.get("destroyed") for r in server.state.generations() if r.path == "img2img"
    )


# -- a missing name turns its stage off, once, with the same message as `emif check` --------

REFINER, JUGGERNAUT = "sd_xl_refiner_1.0_f16.ckpt", "juggernaut_xl_v9_q6p_q8p.ckpt"
DT_MISSING = {  # file removed → the stage that needs it, the words naming it
    "refiner": (REFINER, "generate", f'refiner_model "{REFINER}"'),
    "controlnet": (UNION, "upscale", f'controls[0].file "{UNION}"'),
    "upscaler": ("4x_ultrasharp_f16.ckpt", "upscale", 'upscaler "4x_ultrasharp_f16.ckpt"'),
    "checkpoint": (JUGGERNAUT, "upscale", f'model "{JUGGERNAUT}"'),
}
A1111_MISSING = {
    "refiner": ("sd_xl_refiner_1.0", "generate", 'refiner_checkpoint "sd_xl_refiner_1.0"'),
    "controlnet": (TILE_A1111, "upscale", f'"{TILE_A1111}" is not in GET /controlnet/model_list'),
    "upscaler": ("4x-UltraSharp", "upscale", 'upscaler_1 "4x-UltraSharp"'),
    "checkpoint": ("juggernautXL_v9", "upscale", 'sd_model_checkpoint "juggernautXL_v9"'),
}


def remove(server: sdapi_server.SdapiHTTPServer, kind: str, name: str) -> None:
    if server.state.mode == "drawthings":
        server.state.app.remove(name)
        return
    a1 = server.state.a1111
    if kind == "controlnet":
        a1.controlnet_models.remove(name)
    elif kind == "upscaler":
        a1.upscalers.remove(name)
    else:
        a1.checkpoints = [c for c in a1.checkpoints if c.stem != name]


@pytest.mark.parametrize("kind", sorted(DT_MISSING))
@pytest.mark.parametrize("mode", ["drawthings", "a1111"])
def test_a_missing_name_turns_its_stage_off_and_the_others_go_on(
    tmp_path: Path, mode: str, kind: str
) -> None:
    name, stage, words = (DT_MISSING if mode == "drawthings" else A1111_MISSING)[kind]
    with serving(mode) as server:
        models = tmp_path / "Models" if mode == "drawthings" else None
        if models is not None:
            server.state.app.use_folder(models)
        remove(server, kind, name)
        config = "config.toml" if mode == "drawthings" else "examples/a1111.toml"
        cfg = shipped(tmp_path / "w", config, server.url, models)
        root = cfg.parent / "pipeline"
        ready = root / "GENERATIONS" / "Pre" / "c" / "Pre_c_1_1.png"  # upscale has work too
        ready.parent.mkdir(parents=True)
        ready.write_bytes(server.state.pictures.render("seed:pre", 1024, 1024))
        prompts(root, ["Italy"], per=1)
        check = run_emif("check", "--config", str(cfg))
        result = run_emif("run", "--once", "--config", str(cfg), timeout=300)
    assert check.returncode == 1
    lines = [line for line in check.stdout.splitlines() if words in line]
    assert len(lines) == 1, check.stdout
    assert lines[0].startswith(f"{stage}: ")
    assert result.returncode == 1
    off = [e for e in log_lines(root) if e["event"] == "stage_unavailable"]
    assert [e["stage"] for e in off] == [stage]
    assert lines[0].split(": ", 1)[1] in off[0]["reason"]
    if stage == "generate":  # upscale went on with the image that was there
        assert [p.name for p in pngs(root / "UPSCALED_IMAGES")] == ["Pre_c_1_1_upscaled_1.png"]
        assert not (root / "GENERATIONS" / "Italy").exists()
    else:  # generate went on; upscale sent nothing
        assert len(pngs(root / "GENERATIONS" / "Italy")) == 2
        assert pngs(root / "UPSCALED_IMAGES") == []
        assert {r.path for r in server.state.generations()} == {"txt2img"}


# -- errors, by what each server says ---------------------------------------------------------


def small(root: Path, url: str, payload: dict[str, Any]) -> Path:
    sections = fast_sections(
        root, server={"url": url, "max_attempts": 3, "backoff_s": 0.05, "read_timeout_s": 30}
    )
    extra = "[generate.payload]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in payload.items())
    extra += "[upscale]\nenabled = false\n"
    return write_config(root.parent / "config.toml", sections, extra)


def test_draw_things_422_while_generating_is_retried_and_a_refused_key_fails_at_once(
    root: Path,
) -> None:
    with serving("drawthings") as server:
        server.state.fault("gen422", "notready", seed=1)
        cfg = small(root, server.url, SMALL_DT)
        prompts(root, ["N"], per=1, payload={"bogus": 1})  # the first job: family
        result = run_emif("run", "--once", "--config", str(cfg))
    assert result.returncode == 1
    failed = failures(root, "generate")
    assert list(failed) == ["N/family/N_family_1.json"]
    assert failed["N/family/N_family_1.json"]["attempts"] == 1
    assert 'Unrecognized keys: ["bogus"]' in failed["N/family/N_family_1.json"]["reason"]
    assert [p.name for p in pngs(root / "GENERATIONS")] == ["N_working_1_1.png"]
    retries = [e for e in log_lines(root) if e["event"] == "item_retry"]
    assert [e["item"] for e in retries] == ["N/working/N_working_1"] * 2
    assert "while generating" in retries[0]["reason"]


def test_a1111_500_text_from_errors_is_the_failure_reason(root: Path) -> None:
    with serving("a1111") as server:
        server.state.fault("500", "500", "500", seed=1)
        cfg = small(root, server.url, {"width": 128, "height": 128, "steps": 4})
        prompts(root, ["N"], per=1, payload={"refiner_checkpoint": "nope"})
        result = run_emif("run", "--once", "--config", str(cfg))
    assert result.returncode == 1
    failed = failures(root, "generate")
    refused, oom = failed["N/family/N_family_1.json"], failed["N/working/N_working_1.json"]
    assert refused["attempts"] == 1
    assert "Could not find checkpoint with name nope" in refused["reason"]
    assert oom["attempts"] == 3
    assert "CUDA out of memory" in oom["reason"]


def test_a_cfg_scale_override_is_sent_as_the_recipe_guidance_scale(tmp_path: Path) -> None:
    with serving("drawthings") as server:
        cfg = shipped(tmp_path / "dt", "config.toml", server.url)
        root = cfg.parent / "pipeline"
        text = cfg.read_text().replace("[upscale]\nenabled = true", "[upscale]\nenabled = false")
        cfg.write_text(text)
        prompts(root, ["N"], per=1, payload={"cfg_scale": 5.0})
        good = root.parent / "good.json"
        shutil.copy(root / "queue" / "jobs.json", good)
        assert run_emif("validate", str(good), "--config", str(cfg)).returncode == 0
        result = run_emif("run", "--once", "--config", str(cfg))
        assert result.returncode == 0, result.stderr[-2000:]
        bad = root.parent / "bad.json"
        bad.write_text(good.read_text().replace('"cfg_scale": 5.0', '"cfg_scale": 60'))
        refused = run_emif("validate", str(bad), "--config", str(cfg))
    assert refused.returncode == 1
    assert "jobs[0].payload.guidance_scale: must be between 0 and 50, got 60" in refused.stdout
    sent = [r for r in server.state.generations() if r.payload["prompt"].startswith("a family")]
    assert len(sent) == 1
    assert sent[0].status == 200
    assert sent[0].payload["guidance_scale"] == 5.0
    assert "cfg_scale" not in sent[0].payload


# -- stopping -----------------------------------------------------------------------------------


def test_after_sigint_no_request_is_sent(root: Path) -> None:
    with serving("drawthings", latency=1.0) as server:
        cfg = small(root, server.url, SMALL_DT)
        prompts(root, ["N"], per=4)
        proc = spawn(emif_cmd("run", "--config", str(cfg)))
        try:
            # one answer given, the next request in the server, and the worker that made the
            # first has claimed a third item: its request waits for the server's one slot
            def waiting() -> bool:
                claimed = [e for e in log_lines(root) if e["event"] == "item_claimed"]
                return len(claimed) == 3 and server.state.active == 1

            wait_for(waiting, timeout=60)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        requests = list(server.state.requests)
    late = [(r.path, round(r.received - signalled, 2)) for r in requests if r.received > signalled]
    assert late == []
    events = [e["event"] for e in log_lines(root)]
    stopping = events.index("daemon_stopping")
    assert "request_sent" not in events[stopping:]


# -- emif check: the server's own lists, its build, its settings, its dialect -------------------


def test_check_refuses_a_recipe_written_for_the_other_server(tmp_path: Path) -> None:
    cases = [
        ("a1111", "config.toml", "Draw Things"),
        ("drawthings", "examples/a1111.toml", "AUTOMATIC1111"),
    ]
    for mode, config, other in cases:
        with serving(mode) as server:
            cfg = shipped(tmp_path / mode, config, server.url)
            result = run_emif("check", "--config", str(cfg))
        assert result.returncode == 1
        assert f"written for {other} but {server.url} is" in result.stdout


def test_check_names_keys_an_older_draw_things_build_does_not_know(tmp_path: Path) -> None:
    with serving("drawthings") as server:
        server.state.app.use_folder(tmp_path / "Models")
        cfg = shipped(tmp_path / "old", "config.toml", server.url, tmp_path / "Models")
        server.state.app.build_before("2025-07-20")
        old = run_emif("check", "--config", str(cfg))
        server.state.app.build_before("2027-01-01")
        server.state.app.settings["color_calibration"] = "lab"
        lab = run_emif("check", "--config", str(cfg))
    assert old.returncode == 1
    assert "cfg_zero_star: this Draw Things build does not know it (added 2025-07-20)" in old.stdout
    assert lab.returncode == 1
    assert 'upscale: Draw Things\' Color Calibration is "lab"' in lab.stdout
    assert "generate: ok" in lab.stdout


def test_check_with_a1111_basic_auth(tmp_path: Path) -> None:
    with serving("a1111") as server:
        server.state.a1111.auth = ("team", "s3cret")
        cfg = shipped(tmp_path / "auth", "examples/a1111.toml", server.url)
        refused = run_emif("check", "--config", str(cfg))
        text = cfg.read_text().replace('api_user = ""', 'api_user = "team"')
        cfg.write_text(text.replace('api_password = ""', 'api_password = "s3cret"'))
        allowed = run_emif("check", "--config", str(cfg))
    assert refused.returncode == 1
    assert "server.api_user / server.api_password" in refused.stdout
    assert allowed.returncode == 0, allowed.stdout
