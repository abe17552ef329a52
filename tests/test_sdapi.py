"""The sdapi client and what it knows of the servers: answers, bodies, error classes, merges,
expected sizes, `info` checks — each against the loopback servers' real texts."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emif_daemon.config.schema import parse_config
from emif_daemon.daemon.servers import server_auth
from emif_daemon.errors import (
    PermanentItemError,
    ServerUnavailable,
    Shutdown,
    StageUnavailable,
    TransientError,
)
from emif_daemon.servers.answer_checks import a1111_info_problem, a1111_maps_problem, decode_image
from emif_daemon.servers.dialects import (
    Recipe,
    dt_payload_problems,
    guess_kind,
    merge_payload,
    override_problems,
)
from emif_daemon.servers.resemblance import compare, look
from emif_daemon.servers.sdapi import (
    EXTRAS,
    IMG2IMG,
    TXT2IMG,
    Server,
    detect_kind,
    error_detail,
    failure,
    parse_answer,
    request_body,
)
from emif_daemon.stages.generate import expected_size
from tests import sdapi_server
from tests.fake_images import Pictures
from tests.helpers import free_port, serving


def test_request_body_splices_plain_base64_as_the_last_key() -> None:
    payload: dict[str, Any] = {"prompt": 'a "quoted" / prompt', "loras": [], "refiner_model": None}
    image = bytes(range(256)) * 100
    body = request_body({**payload, "init_images": ["stale"]}, image)
    doc = json.loads(body)
    assert doc["init_images"] == [base64.b64encode(image).decode()]
    assert {k: v for k, v in doc.items() if k != "init_images"} == payload
    assert b"data:" not in body
    assert b"\n" not in body
    assert json.loads(request_body(payload)) == payload


def test_extras_body_sends_one_image_string_and_its_answer_is_read() -> None:
    image = b"\x89PNG" + bytes(range(200))
    doc = json.loads(request_body({"upscaler_1": "4x-UltraSharp", "image": "x"}, image, "image"))
    assert doc == {"upscaler_1": "4x-UltraSharp", "image": base64.b64encode(image).decode()}
    answer = parse_answer(
        {"image": base64.b64encode(b"up").decode(), "html_info": ""}, 1, 0.1, "image"
    )
    assert answer.images == [b"up"]


def test_decode_accepts_data_prefix_and_rejects_garbage() -> None:
    raw = b"\x89PNG\r\n\x1a\n1234"
    text = base64.b64encode(raw).decode()
    assert decode_image(text) == raw
    assert decode_image("data:image/png;base64," + text) == raw
    for bad in ("not base64!!", text[:-2] + "*=", 42):
        with pytest.raises(TransientError):
            decode_image(bad)


def test_answer_takes_only_the_images_asked_for_and_parses_a1111_info() -> None:
    images = [base64.b64encode(b"one").decode(), base64.b64encode(b"map").decode()]
    answer = parse_answer({"images": images, "info": json.dumps({"seed": 7})}, 1, 0.5)
    assert answer.images == [b"one"]
    assert answer.extra_images == 1
    assert answer.info == {"seed": 7}
    with pytest.raises(TransientError, match="no project is open"):
        parse_answer({"images": []}, 1, 0.1)


def test_server_kind_from_options() -> None:
    assert detect_kind({"model": "sd_xl_base_1.0_f16.ckpt"}).kind == "drawthings"
    assert detect_kind({"sd_model_checkpoint": "x [abc]"}).kind == "a1111"
    assert detect_kind({}).kind == "unknown"


# -- errors, classified by the server's own text ------------------------------------------

DT_REFUSED: dict[str, dict[str, Any]] = {
    "unknown key": {"prompt": "p", "foo": 1},
    "alias twice": {"prompt": "p", "guidance_scale": 5.0, "cfg_scale": 5.0},
    "out of range": {"prompt": "p", "steps": 500},
    "enum": {"prompt": "p", "sampler": "Euler"},
    "type": {"prompt": "p", "steps": "30"},
    "unsendable": {"prompt": "p", "color_calibration": "none"},
    "model unknown": {"prompt": "p", "model": "nope.ckpt"},
    "upscaler missing": {"prompt": "p", "upscaler": "4x UltraSharp"},
    "no prompt": {"prompt": None},
}


@pytest.fixture(scope="module")
def dt_server() -> Iterator[sdapi_server.SdapiHTTPServer]:
    with serving("drawthings") as server:
        yield server


@pytest.mark.parametrize("case", sorted(DT_REFUSED))
def test_draw_things_422_refusing_the_request_fails_now_with_its_text(
    dt_server: sdapi_server.SdapiHTTPServer, case: str
) -> None:
    server = Server(dt_server.url, connect_timeout=2, read_timeout=10)
    with pytest.raises(PermanentItemError) as caught:
        server.post(
            TXT2IMG, {"width": 128, "height": 128, **DT_REFUSED[case]}, priority=1, expect=1
        )
    detail = dt_server.state.requests[-1]
    assert detail.status == 422
    assert "Draw Things refused the request (HTTP 422)" in str(caught.value)


@pytest.mark.parametrize("fault", ["gen422", "notready"])
def test_draw_things_422_raised_while_generating_is_transient(
    dt_server: sdapi_server.SdapiHTTPServer, fault: str
) -> None:
    dt_server.state.fault(fault)
    server = Server(dt_server.url, connect_timeout=2, read_timeout=10)
    with pytest.raises(TransientError, match="while generating"):
        server.post(TXT2IMG, {"prompt": "p", "width": 128, "height": 128}, priority=1, expect=1)
    assert dt_server.state.requests[-1].status == 422


def test_a1111_reason_comes_from_errors_and_missing_names_fail_now() -> None:
    oom = b'{"error":"OutOfMemoryError","detail":"","body":"","errors":"CUDA out of memory"}'
    assert error_detail(oom) == "CUDA out of memory"
    assert isinstance(failure(500, "CUDA out of memory", "a1111"), TransientError)
    for text in (
        "Could not find checkpoint with name x",
        "could not find upscaler named 4x UltraSharp",
        "model 'x' not found",
        "Invalid encoded image",
    ):
        assert isinstance(failure(500, text, "a1111"), PermanentItemError), text
    assert isinstance(failure(401, "Incorrect username or password", "a1111"), PermanentItemError)
    assert "HTTP 500" in str(failure(500, "", "drawthings"))


def test_a1111_500_over_http_reads_errors() -> None:
    with serving("a1111") as fake:
        server = Server(fake.url, connect_timeout=2, read_timeout=10)
        with pytest.raises(PermanentItemError, match="Could not find checkpoint with name nope"):
            server.post(TXT2IMG, {"refiner_checkpoint": "nope"}, priority=1, expect=1)
        fake.state.fault("500")
        with pytest.raises(TransientError, match="CUDA out of memory"):
            server.post(TXT2IMG, {"prompt": "p"}, priority=1, expect=1)


# -- transport ------------------------------------------------------------------------------


def test_a_request_whose_turn_comes_after_a_stop_is_never_sent() -> None:
    with serving(latency=0.5) as fake:
        server = Server(fake.url, connect_timeout=2, read_timeout=10)
        stop = threading.Event()
        payload = {"prompt": "p", "width": 128, "height": 128}

        def check() -> None:
            if stop.is_set():
                raise Shutdown

        first = threading.Thread(
            target=server.post, args=(TXT2IMG, payload), kwargs={"priority": 1, "expect": 1}
        )
        first.start()
        threading.Event().wait(0.2)  # the first request holds the server's one slot
        errors: list[BaseException] = []

        def second() -> None:
            try:
                server.post(TXT2IMG, payload, priority=1, expect=1, check=check)
            except Shutdown as exc:
                errors.append(exc)

        waiting = threading.Thread(target=second)
        waiting.start()
        stop.set()
        first.join(10)
        waiting.join(10)
        assert len(errors) == 1
        assert len(fake.state.generations()) == 1


def test_basic_auth_from_config() -> None:
    with serving("a1111") as fake:
        fake.state.a1111.auth = ("team", "s3cret")
        bare = Server(fake.url, connect_timeout=2, read_timeout=10)
        with pytest.raises(StageUnavailable, match=r"server\.api_user"):
            bare.probe()
        cfg = parse_config(
            {"server": {"url": fake.url, "api_user": "team", "api_password": "s3cret"}},
            base_dir=Path.cwd(),
        )
        auth = server_auth(cfg.server)
        server = Server(fake.url, connect_timeout=2, read_timeout=10, auth=auth)
        assert server.probe().kind == "a1111"
        assert len(server.post(TXT2IMG, {"prompt": "p"}, priority=1, expect=1).images) == 1


def test_a_server_that_is_off_is_unavailable_not_a_failure() -> None:
    server = Server(f"http://127.0.0.1:{free_port()}", connect_timeout=1, read_timeout=5)
    with pytest.raises(ServerUnavailable):
        server.probe()


# -- payloads: one key per parameter, checked in the server's dialect ----------------------


def test_an_alias_override_replaces_the_recipe_key_under_its_spelling() -> None:
    recipe = {"guidance_scale": 7.0, "sampler": "DPM++ 2M Karras", "steps": 30}
    merged = merge_payload(recipe, {"cfg_scale": 5.0, "sampler_name": "Euler a", "seed": 3})
    assert merged == {"guidance_scale": 5.0, "sampler": "Euler a", "steps": 30, "seed": 3}
    table = {"include": "recipes/drawthings-sdxl-txt2img.json", "cfg_scale": 4.0}
    cfg = parse_config(
        {"generate": {"payload": table}},
        base_dir=Path(__file__).resolve().parent.parent,
    )
    assert cfg.generate.payload["guidance_scale"] == 4.0
    assert "cfg_scale" not in cfg.generate.payload
    assert isinstance(cfg.generate.payload, Recipe)
    assert cfg.generate.payload.where == "recipes/drawthings-sdxl-txt2img.json (generate.payload)"


def test_draw_things_payload_problems_match_what_the_server_refuses() -> None:
    payload = {
        "guidance_scale": 5.0,
        "cfg_scale": 5.0,
        "steps": 500,
        "sampler": "Euler",
        "color_calibration": "none",
        "hr_scale": 2,
        "hires_fix": 1,
        "seed": 7,
        "controls": [{"file": "x.ckpt", "weight": 1.0}],
    }
    problems = dt_payload_problems(payload)
    assert [p.split(":")[0] for p in problems] == [
        "cfg_scale",
        "steps",
        "sampler",
        "color_calibration",
        "hr_scale",
        "hires_fix",
        "controls[0]",
    ]
    assert dt_payload_problems({"cfg_zero_star": False}, known={"model"}) == [
        "cfg_zero_star: this Draw Things build does not know it (added 2025-07-20); update "
        "Draw Things or remove the key"
    ]
    assert guess_kind(payload) == "drawthings"
    assert guess_kind({"override_settings": {}, "cfg_scale": 7}) == "a1111"
    recipe = {"guidance_scale": 7.0}
    assert override_problems(recipe, {"cfg_scale": 60}, "drawthings", "txt2img") == [
        "guidance_scale: must be between 0 and 50, got 60"
    ]
    assert override_problems(recipe, {"cfg_scale": 6}, "drawthings", "txt2img") == []


def test_expected_size_per_server() -> None:
    dt = {"width": 1024, "height": 1000, "hires_fix": True, "hires_fix_width": 768}
    assert expected_size(dt, "drawthings") == (1024, 960)
    assert expected_size({**dt, "enable_hr": True}, "drawthings") == (1024, 960)
    up = {"width": 512, "height": 512, "upscaler": "4x_ultrasharp_f16.ckpt"}
    assert expected_size(up, "drawthings") == (2048, 2048)
    assert expected_size({**up, "upscaler_scale": 2}, "drawthings") == (1024, 1024)
    assert expected_size({**up, "upscaler": "custom.ckpt"}, "drawthings") is None
    a1 = {"width": 768, "height": 512, "enable_hr": True}
    assert expected_size(a1, "a1111") == (1536, 1024)
    assert expected_size({**a1, "hr_resize_x": 1536, "hr_resize_y": 1024}, "a1111") == (1536, 1024)
    assert expected_size({**a1, "hr_resize_x": 1152}, "a1111") == (1152, 768)
    assert expected_size({**a1, "hr_scale": 1.5}, "a1111") == (1152, 768)


# -- checks after each answer ------------------------------------------------------------


def test_a1111_info_shows_a_dropped_checkpoint_or_refiner() -> None:
    with serving("a1111") as fake:
        body = {
            "override_settings": {"sd_model_checkpoint": "juggernautXL_v9.safetensors"},
            "refiner_checkpoint": "sd_xl_refiner_1.0",
            "refiner_switch_at": 0.7,
        }
        answer = requests.post(fake.url + TXT2IMG, json=body, timeout=10).json()
        info = json.loads(answer["info"])
        problem = a1111_info_problem(body, info)
        assert problem is not None
        assert 'asked for checkpoint "juggernautXL_v9.safetensors"' in problem
        good = {**body, "override_settings": {"sd_model_checkpoint": "juggernautXL_v9"}}
        info = json.loads(requests.post(fake.url + TXT2IMG, json=good, timeout=10).json()["info"])
        assert a1111_info_problem(good, info) is None
        assert a1111_info_problem(
            {**good, "refiner_switch_at": 0.7}, {**info, "extra_generation_params": {}}
        )


def test_a1111_controlnet_maps_show_whether_it_ran() -> None:
    unit = {
        "enabled": True,
        "module": "tile_resample",
        "model": "ttplanetSDXLControlnet_v20Fp16 [c8f29e1e]",
    }
    payload = {"alwayson_scripts": {"controlnet": {"args": [unit]}}}
    with serving("a1111") as fake:
        for model, maps in ((unit["model"], 1), ("ttplanetSDXLControlnet_v20Fp16 [00000000]", 0)):
            body = {"alwayson_scripts": {"controlnet": {"args": [{**unit, "model": model}]}}}
            answer = requests.post(fake.url + TXT2IMG, json=body, timeout=10).json()
            assert len(answer["images"]) == 1 + maps
    assert a1111_maps_problem(payload, 1) is None
    assert "did not run" in (a1111_maps_problem(payload, 0) or "")
    off = {"alwayson_scripts": {"controlnet": {"args": [{**unit, "save_detected_map": False}]}}}
    assert a1111_maps_problem(off, 0) is None


def test_the_extras_route_upscales_without_diffusion() -> None:
    with serving("a1111") as fake:
        server = Server(fake.url, connect_timeout=2, read_timeout=10)
        source = Pictures().render("seed:1", 256, 256)
        started = time.monotonic()
        answer = server.post(
            EXTRAS,
            {"upscaler_1": "4x-UltraSharp", "upscaling_resize": 2},
            priority=1,
            expect=1,
            init_image=source,
        )
        assert time.monotonic() - started < 10
        assert answer.images[0][16:24] == (512).to_bytes(4, "big") * 2
        assert compare(look(source), look(answer.images[0])).resemblance > 0.95
        zero = {"denoising_strength": 0, "steps": 1, "width": 256, "height": 256}
        ruined = server.post(IMG2IMG, zero, priority=1, expect=1, init_image=source)
        assert compare(look(source), look(ruined.images[0])).resemblance < 0.2
