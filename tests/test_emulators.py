"""The loopback servers are no kinder than the real ones: each fact the daemon relies on,
as the servers' source states it (docs/servers.md), checked over HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emif_daemon.servers.resemblance import compare, look
from tests import fake_drawthings, sdapi_server
from tests.helpers import serving

TXT = "/sdapi/v1/txt2img"
IMG = "/sdapi/v1/img2img"
CONTROL: dict[str, Any] = {
    "file": "controlnet_tile_1.x_v1.1_f16.ckpt",
    "weight": 0.5,
    "guidanceStart": 0.0,
    "guidanceEnd": 1.0,
    "noPrompt": False,
    "globalAveragePooling": False,
    "downSamplingRate": 1.0,
    "controlImportance": "balanced",
    "inputOverride": "",
    "targetBlocks": [],
}


@pytest.fixture(scope="module")
def dt() -> Iterator[sdapi_server.SdapiHTTPServer]:
    with serving("drawthings") as server:
        yield server


@pytest.fixture(scope="module")
def a1() -> Iterator[sdapi_server.SdapiHTTPServer]:
    with serving("a1111") as server:
        yield server


def post(server: sdapi_server.SdapiHTTPServer, path: str, body: Any) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=20)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_draw_things_routes_and_answers(dt: sdapi_server.SdapiHTTPServer) -> None:
    settings = requests.get(dt.url + "/", timeout=5).json()
    assert len(settings) == 83  # every parameter, under its primary key, the app's value
    assert requests.get(dt.url + "/sdapi/v1/options", timeout=5).json() == settings
    missing = requests.get(dt.url + "/sdapi/v1/sd-models", timeout=5)
    assert (missing.status_code, missing.content) == (404, b"")
    ok = post(dt, TXT, {"prompt": "p", "width": 128, "height": 128})
    assert ok.headers["Keep-Alive"] == "timeout=5, max=5"
    assert b"\\/" in ok.content or b"/" not in ok.content  # Swift escapes every slash
    assert list(ok.json()) == ["images"]  # no info, no seed


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"cfg_scale": 5, "guidance_scale": 5}, "More than one key for guidance specified"),
        ({"steps": 0}, "Value for steps must be between 1 and 150, inclusive (was 0)"),
        ({"sampler": "Euler"}, 'Invalid value for sampler (options: ["DPM++ 2M Karras"'),
        ({"sampler_name": "DPM++ 2M"}, "Invalid value for sampler_name (options:"),
        ({"hires_fix": 1}, "typeMismatch(Swift.Bool"),
        ({"steps": 7.5}, "dataCorrupted("),
        ({"seed_mode": None}, "valueNotFound(Swift.String"),
        ({"expand_prompt_to_json": False}, "More than one key for expand_prompt_to_json"),
        ({"foo": 1, "steps": 500}, "Value for steps"),  # a range error before unknown keys
        ({"foo": 1, "override_settings": {}}, 'Unrecognized keys: ["foo", "override_settings"]'),
        ({"init_images": ["aGk="]}, "Data in init_images did not represent a valid image"),
        ({"upscaler": "4x UltraSharp"}, "Missing file: 4x UltraSharp (in CLI"),
        ({"loras": [{"file": "a.ckpt"}]}, 'keyNotFound(CodingKeys(stringValue: "weight"'),
        ({"controls": [{"file": "c.ckpt", "weight": 1}]}, "keyNotFound("),
        # `loras` / `controls` decode as arrays of objects with typed fields
        ({"loras": {"file": "a.ckpt", "weight": 1}}, "typeMismatch(Swift.Array<Any>"),
        ({"controls": {}}, "typeMismatch(Swift.Array<Any>"),
        ({"loras": ["a.ckpt"]}, "typeMismatch(Swift.Dictionary<Swift.String, Any>"),
        ({"loras": [{"file": "a.ckpt", "weight": "1"}]}, "typeMismatch(Swift.Float"),
        ({"controls": [{**CONTROL, "weight": "0.5"}]}, "typeMismatch(Swift.Float"),
        ({"controls": [{**CONTROL, "noPrompt": 0}]}, "typeMismatch(Swift.Bool"),
        ({"controls": [{**CONTROL, "targetBlocks": "all"}]}, "typeMismatch(Swift.Array<String>"),
        ({"controls": [{**CONTROL, "inputOverride": None}]}, "valueNotFound(Swift.String"),
        ({"model": "SDXL Base (v2)"}, 'Unrecognized model name "SDXL Base (v2)"'),
        ({"prompt": None}, "Missing prompt"),
        ({"restore_faces": "yes"}, "typeMismatch(Swift.Bool"),
    ],
)
def test_draw_things_refuses_with_its_own_text(
    dt: sdapi_server.SdapiHTTPServer, body: dict[str, Any], detail: str
) -> None:
    answer = post(dt, TXT, {"prompt": "p", **body})
    assert answer.status_code == 422
    doc = answer.json()
    assert doc["detail"].startswith(detail), doc["detail"]
    assert {k: v for k, v in doc.items() if k != "detail"} == {
        "error": "HTTPException",
        "body": "",
        "errors": "",
    }


def test_draw_things_init_image_rules(dt: sdapi_server.SdapiHTTPServer) -> None:
    image = dt.state.pictures.render("seed:1", 256, 192)
    wrong = post(dt, IMG, {"prompt": "p", "init_images": [b64(image)], "width": 256, "height": 256})
    assert wrong.json()["detail"] == "init_images height doesn't match 192 from the parameter 256"
    prefixed = post(
        dt, IMG, {"prompt": "p", "init_images": ["data:image/png;base64," + b64(image)]}
    )
    assert prefixed.json()["detail"].startswith("dataCorrupted(")
    on_txt = post(dt, TXT, {"prompt": "p", "init_images": []})
    assert on_txt.json()["detail"] == "init_images is not supported for text-to-image"
    canvas = post(dt, IMG, {"prompt": "p", "init_images": [], "width": 256, "height": 192})
    assert canvas.status_code == 200
    assert "app's canvas" in dt.state.generations()[-1].dropped[0]


def test_draw_things_silent_drops_are_recorded(dt: sdapi_server.SdapiHTTPServer) -> None:
    union = {
        "file": "controlnet_xinsir_union_promax_sdxl_1.0_f16.ckpt",
        "weight": 0.5,
        "guidanceStart": 0.0,
        "guidanceEnd": 1.0,
        "noPrompt": False,
        "globalAveragePooling": False,
        "downSamplingRate": 1.0,
        "controlImportance": "balanced",
        "inputOverride": "",
        "targetBlocks": [],
    }
    image = dt.state.pictures.render("seed:2", 256, 256)
    body = {
        "prompt": "p",
        "init_images": [b64(image)],
        "width": 256,
        "height": 256,
        "strength": 0.3,
        "refiner_model": "sd_xl_refiner_1.0_q6p_q8p.ckpt",
        "controls": [union],
        "steps": None,
    }
    dt.state.app.remove("sd_xl_refiner_1.0_q6p_q8p.ckpt")
    assert post(dt, IMG, body).status_code == 200
    rec = dt.state.generations()[-1]
    assert rec.applied["refiner_model"] is None
    assert rec.applied["controls"] == []
    assert any("refiner_model" in d for d in rec.dropped)
    assert any("union ControlNet" in d for d in rec.dropped)
    assert "steps" in rec.app_values  # null on an int keeps the app's value
    tile: dict[str, Any] = {
        **body,
        "refiner_model": None,
        "controls": [{**union, "inputOverride": "tile"}],
    }
    post(dt, IMG, tile)
    assert dt.state.generations()[-1].applied["controls"] == [union["file"]]
    post(dt, TXT, {"prompt": "p", "width": 128, "height": 128, "controls": [tile["controls"][0]]})
    assert dt.state.generations()[-1].applied["controls"] == []  # no input image on txt2img


def test_draw_things_knows_only_the_specifications_it_has_registered(tmp_path: Path) -> None:
    """A model, ControlNet or LoRA file is usable only with its specification: built in, or
    in the registry the app writes when it downloads one (custom*.json)."""
    with serving("drawthings") as fresh:
        app = fresh.state.app
        app.use_folder(tmp_path / "Models")
        xinsir = fake_drawthings.XINSIR_UNION["file"]
        assert (
            json.loads((tmp_path / "Models" / "custom_controlnet.json").read_text())[0]["file"]
            == xinsir
        )
        source = fresh.state.pictures.render("seed:2", 256, 256)
        control = {**CONTROL, "file": xinsir, "inputOverride": "tile"}
        body = {
            "prompt": "p",
            "init_images": [b64(source)],
            "width": 256,
            "height": 256,
            "strength": 0.3,
            "model": "juggernaut_xl_v9_q6p_q8p.ckpt",
            "controls": [control],
        }
        assert post(fresh, IMG, body).status_code == 200
        assert fresh.state.generations()[-1].applied["controls"] == [xinsir]
        app.unregister("controlnet", xinsir)  # the file stays, its specification goes
        post(fresh, IMG, body)
        assert fresh.state.generations()[-1].applied["controls"] == []
        assert "no ControlNet specification" in fresh.state.generations()[-1].dropped[0]
        app.unregister("model", "juggernaut_xl_v9_q6p_q8p.ckpt")
        assert (
            post(fresh, IMG, body)
            .json()["detail"]
            .startswith('Unrecognized model name "juggernaut_xl_v9_q6p_q8p.ckpt"')
        )
        # the 8-bit refiner by its display name, as the app spells it
        refined = {
            "prompt": "p",
            "width": 128,
            "height": 128,
            "refiner_model": "SDXL Refiner v1.0 (8-bit)",
        }
        assert post(fresh, TXT, refined).status_code == 200
        applied = fresh.state.generations()[-1].applied["refiner_model"]
        assert applied == "sd_xl_refiner_1.0_q6p_q8p.ckpt"
        # a LoRA without a specification counts as an SD 1.5 one: dropped on SDXL
        app.install("lora", fake_drawthings.MORE_DETAILS, register=False)
        lora = {**refined, "loras": [{"file": fake_drawthings.MORE_DETAILS["file"], "weight": 1}]}
        assert post(fresh, TXT, lora).status_code == 200
        assert fresh.state.generations()[-1].applied["loras"] == []


def test_draw_things_sizes_and_strength(dt: sdapi_server.SdapiHTTPServer) -> None:
    body = {
        "prompt": "p",
        "width": 200,
        "height": 200,
        "strength": 0.3,
        "hires_fix": True,
        "hires_fix_width": 256,
        "hires_fix_height": 256,
        "upscaler": "4x_ultrasharp_f16.ckpt",
    }
    image = base64.b64decode(post(dt, TXT, body).json()["images"][0])
    assert sdapi_server.png_dims(image) == (768, 768)  # floored to 192, then ×4, txt2img too
    rec = dt.state.generations()[-1]
    assert (rec.applied["strength"], rec.applied["hires_fix"]) == (1.0, False)
    source = dt.state.pictures.render("seed:3", 256, 256)
    up = {
        "prompt": "",
        "init_images": [b64(source)],
        "width": 256,
        "height": 256,
        "strength": 0.0,
        "upscaler": "4x_ultrasharp_f16.ckpt",
        "upscaler_scale": 2,
    }
    answer = base64.b64decode(post(dt, IMG, up).json()["images"][0])
    assert sdapi_server.png_dims(answer) == (512, 512)
    assert compare(look(source), look(answer)).resemblance > 0.95


def test_a1111_answers_and_silent_fallbacks(a1: sdapi_server.SdapiHTTPServer) -> None:
    body = {
        "prompt": "p",
        "width": 512,
        "height": 512,
        "enable_hr": True,
        "hr_scale": 2,
        "foo": "ignored",
        "model": "sd_xl_base_1.0_f16.ckpt",
        "sampler_name": "Nope",
        "scheduler": "Nope",
        "override_settings": {"sd_model_checkpoint": "juggernautXL_v9.safetensors"},
    }
    reply = post(a1, TXT, body)
    assert reply.headers["Content-Encoding"] == "gzip"  # row 17: every answer over 1000 bytes
    answer = reply.json()
    assert set(answer) == {"images", "parameters", "info"}
    info = json.loads(answer["info"])
    assert sdapi_server.png_dims(base64.b64decode(answer["images"][0])) == (1024, 1024)
    assert (info["width"], info["height"]) == (512, 512)  # row 8: the first pass's size
    assert info["sd_model_name"] == "sd_xl_base_1.0"  # the override was not an exact alias
    assert info["sampler_name"] == "DPM++ 2M"  # row 10: the first sampler, its own scheduler
    assert info["extra_generation_params"]["Schedule type"] == "Karras"
    assert "foo" not in answer["parameters"]  # row 9: the request model, defaults filled in
    assert answer["parameters"]["steps"] == 50
    dropped = a1.state.generations()[-1].dropped
    assert any("sd_model_checkpoint" in d for d in dropped)
    euler = json.loads(post(a1, TXT, {"sampler_name": "Euler", "steps": 2}).json()["info"])
    assert "Schedule type" not in euler["extra_generation_params"]  # row 11
    bad = post(a1, TXT, {"hr_upscaler": "4x UltraSharp", "enable_hr": True})
    assert (bad.status_code, bad.json()) == (
        500,
        {
            "error": "Exception",
            "detail": "",
            "body": "",
            "errors": "could not find upscaler named 4x UltraSharp",
        },
    )
    assert "Content-Encoding" not in bad.headers
    init = post(a1, IMG, {"prompt": "p"})
    assert (init.status_code, init.json()) == (
        404,
        {  # row 6: `errors` empty
            "error": "HTTPException",
            "detail": "Init image not found",
            "body": "",
            "errors": "",
        },
    )
    assert post(a1, TXT, {"script_name": "ultimate sd upscale"}).status_code == 422
    assert post(a1, TXT, {"steps": "x"}).json()["detail"][0]["loc"] == ["body", "steps"]
    broken = requests.post(a1.url + TXT, data=b"{not json", timeout=5).json()["detail"][0]
    assert broken["loc"] == ["body", 1]  # row 19
    assert broken["msg"].startswith("Expecting property name enclosed in double quotes")


def test_a1111_null_is_a_value_not_the_default(a1: sdapi_server.SdapiHTTPServer) -> None:
    """Row 7: `width: null` is a 500 TypeError."""
    reply = post(a1, TXT, {"prompt": "p", "width": None})
    assert (reply.status_code, reply.json()["error"]) == (500, "TypeError")
    assert "NoneType" in reply.json()["errors"]


def test_a1111_refiner_is_in_info_only_when_it_swapped_in(
    a1: sdapi_server.SdapiHTTPServer,
) -> None:
    """Row 2: at steps 1 the switch never comes, and nothing but the missing key says so."""
    base = {
        "prompt": "p",
        "width": 64,
        "height": 64,
        "refiner_checkpoint": "sd_xl_refiner_1.0",
        "refiner_switch_at": 0.7,
    }
    few = json.loads(post(a1, TXT, {**base, "steps": 1}).json()["info"])
    assert "Refiner" not in few["extra_generation_params"]
    many = json.loads(post(a1, TXT, {**base, "steps": 4}).json()["info"])
    assert many["extra_generation_params"]["Refiner"].startswith("sd_xl_refiner_1.0 [")


def test_a1111_puts_a_grid_first_when_it_saves_a_batch(a1: sdapi_server.SdapiHTTPServer) -> None:
    """Row 3: 3 images, a 128×64 grid first, `index_of_first_image` 1."""
    body = {"prompt": "p", "width": 64, "height": 64, "batch_size": 2, "steps": 2}
    plain = post(a1, TXT, body).json()
    assert len(plain["images"]) == 2
    saved = post(a1, TXT, {**body, "save_images": True}).json()
    sizes = [sdapi_server.png_dims(base64.b64decode(i)) for i in saved["images"]]
    assert sizes == [(128, 64), (64, 64), (64, 64)]
    assert json.loads(saved["info"])["index_of_first_image"] == 1
    assert saved["images"][1:] == plain["images"]


def test_a1111_lists_as_the_real_one_does(a1: sdapi_server.SdapiHTTPServer) -> None:
    def get(path: str) -> Any:
        return requests.get(f"{a1.url}{path}", timeout=5).json()

    models = {m["model_name"]: m for m in get("/sdapi/v1/sd-models")}
    loaded, never = models["sd_xl_base_1.0"], models["SDXL_juggernautXL_v9"]
    assert loaded["hash"]
    assert loaded["title"].endswith(f" [{loaded['hash']}]")
    assert (never["hash"], never["sha256"]) == (None, None)  # row 12: never loaded
    assert never["title"] == "SDXL/juggernautXL_v9.safetensors"
    upscalers = {u["name"]: u for u in get("/sdapi/v1/upscalers")}  # rows 1 and 16
    assert upscalers["R-ESRGAN 4x+"]["model_path"].startswith("https://github.com/")
    assert upscalers["4x-UltraSharp"]["model_path"].endswith("4x-UltraSharp.pth")
    assert (upscalers["Lanczos"]["model_path"], upscalers["Lanczos"]["scale"]) == (None, 4.0)
    assert upscalers["DAT x2"]["scale"] == 2.0
    assert {u["model_url"] for u in upscalers.values()} == {None}
    scripts = get("/sdapi/v1/scripts")  # row 14
    assert "Hypertile" in scripts["txt2img"]
    assert {"extra options", "soft inpainting"} <= set(scripts["img2img"])
    inner = {s["name"] for s in get("/sdapi/v1/schedulers") if s["need_inner_model"]}
    assert inner == {"uniform", "sgm_uniform", "simple", "normal", "ddim", "beta"}  # row 15
    post(
        a1,
        TXT,
        {
            "prompt": "p",
            "width": 64,
            "height": 64,
            "steps": 2,
            "override_settings": {"sd_model_checkpoint": "juggernautXL_v9"},
            "override_settings_restore_afterwards": False,
        },
    )
    options = get("/sdapi/v1/options")  # row 13: the string last sent
    assert options["sd_model_checkpoint"] == "juggernautXL_v9"
    assert get("/sdapi/v1/sd-models")[2]["hash"]  # hashed once loaded


def test_a1111_listed_upscaler_without_weights_is_a_silent_lanczos_resize(
    a1: sdapi_server.SdapiHTTPServer,
) -> None:
    """Row 1: HTTP 200, `html_info` names the upscaler asked for, the picture is a plain
    resize."""
    source = a1.state.pictures.render("seed:8", 128, 128)
    body = {"image": b64(source), "upscaler_1": "R-ESRGAN 4x+", "upscaling_resize": 2}
    reply = post(a1, "/sdapi/v1/extra-single-image", body)
    assert reply.status_code == 200
    assert reply.json()["html_info"] == (
        "<p>Postprocess upscale by: 2.0, Postprocess upscaler: R-ESRGAN 4x+</p>"  # row 18
    )
    rec = a1.state.generations()[-1]
    assert rec.applied == {"upscaler": "Lanczos", "size": [256, 256]}
    assert rec.dropped == [
        "upscaler 'R-ESRGAN 4x+': weights not downloaded, a plain Lanczos resize"
    ]


def test_a1111_controlnet_module_and_none_model(a1: sdapi_server.SdapiHTTPServer) -> None:
    """Row 23: an unknown module is a 500; row 24: model "None" with a preprocessor still
    appends its map although no ControlNet ran; row 26: a loaded model stays usable."""
    unit = {"enabled": True, "module": "canny", "model": "None", "image": "x"}
    body = {
        "prompt": "p",
        "width": 64,
        "height": 64,
        "steps": 2,
        "alwayson_scripts": {"controlnet": {"args": [unit]}},
    }
    reply = post(a1, TXT, body)
    assert len(reply.json()["images"]) == 2
    assert a1.state.generations()[-1].applied["controlnet"] == []
    bad = post(
        a1,
        TXT,
        {**body, "alwayson_scripts": {"controlnet": {"args": [{**unit, "module": "nope_module"}]}}},
    )
    assert (bad.status_code, bad.json()["error"]) == (500, "ValidationError")
    assert "module(nope_module) not found in supported modules" in bad.json()["errors"]
    model = "control_v11f1e_sd15_tile [a371b31b]"
    used = {**body, "alwayson_scripts": {"controlnet": {"args": [{**unit, "model": model}]}}}
    post(a1, TXT, used)
    a1.state.a1111.controlnet_models.remove(model)
    try:
        listed = requests.get(a1.url + "/controlnet/model_list", timeout=5).json()
        assert model not in listed["model_list"]  # the list is read again at once
        post(a1, TXT, used)
        assert a1.state.generations()[-1].applied["controlnet"] == [model]  # from memory
    finally:
        a1.state.a1111.controlnet_models.append(model)


def test_a1111_img2img_at_steps_1_is_smeared_at_any_strength(
    a1: sdapi_server.SdapiHTTPServer,
) -> None:
    """Row 20, and an answer destroyed the way a sampler destroys it: smooth, the right
    size, nothing of the input left."""
    source = a1.state.pictures.render("seed:4", 256, 256)
    base = {"init_images": [b64(source)], "width": 256, "height": 256}
    for strength, steps, alike in (
        (0.0, 1, False),
        (0.3, 1, False),
        (0.0, 30, True),
        (0.3, 30, True),
    ):
        out = post(a1, IMG, {**base, "denoising_strength": strength, "steps": steps}).json()
        image = base64.b64decode(out["images"][0])
        assert sdapi_server.png_dims(image) == (256, 256)
        scores = compare(look(source), look(image))
        assert (scores.resemblance > 0.9) is alike, (strength, steps)
        if not alike:
            assert scores.detail_ratio < 0.25  # a smooth smear, not fine noise


def test_a1111_lists_and_auth(a1: sdapi_server.SdapiHTTPServer) -> None:
    for path in ("sd-models", "upscalers", "samplers", "schedulers", "scripts", "options"):
        assert requests.get(f"{a1.url}/sdapi/v1/{path}", timeout=5).status_code == 200
    models = requests.get(a1.url + "/controlnet/model_list", timeout=5).json()["model_list"]
    assert "ttplanetSDXLControlnet_v20Fp16 [c8f29e1e]" in models
    a1.state.a1111.auth = ("u", "p")
    try:  # rows 4 and 5: which text, the handler's shape, no WWW-Authenticate
        missing = requests.get(a1.url + "/sdapi/v1/options", timeout=5)
        wrong = requests.get(a1.url + "/sdapi/v1/options", auth=("u", "x"), timeout=5)
        for reply, detail in (
            (missing, "Not authenticated"),
            (wrong, "Incorrect username or password"),
        ):
            assert (reply.status_code, reply.json()) == (
                401,
                {"error": "HTTPException", "detail": detail, "body": "", "errors": ""},
            )
            assert "WWW-Authenticate" not in reply.headers
        assert requests.get(a1.url + "/sdapi/v1/options", auth=("u", "p"), timeout=5).ok
    finally:
        a1.state.a1111.auth = None
