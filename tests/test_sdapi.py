"""The sdapi client's pure parts: answers, bodies, server kind, error details."""

from __future__ import annotations

import base64
import json

import pytest

from emif_daemon.errors import TransientError
from emif_daemon.sdapi import decode_image, detect_kind, parse_answer, request_body


def test_request_body_splices_plain_base64_as_the_last_key() -> None:
    payload = {"prompt": 'a "quoted" / prompt', "loras": [], "refiner_model": None}
    image = bytes(range(256)) * 100
    body = request_body({**payload, "init_images": ["stale"]}, image)
    doc = json.loads(body)
    assert doc["init_images"] == [base64.b64encode(image).decode()]
    assert {k: v for k, v in doc.items() if k != "init_images"} == payload
    assert b"data:" not in body
    assert b"\n" not in body
    assert json.loads(request_body(payload)) == payload


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
    assert answer.info == {"seed": 7}
    with pytest.raises(TransientError, match="no project is open"):
        parse_answer({"images": []}, 1, 0.1)


def test_server_kind_from_options() -> None:
    assert detect_kind({"model": "sd_xl_base_1.0_f16.ckpt"}).kind == "drawthings"
    assert detect_kind({"sd_model_checkpoint": "x [abc]"}).kind == "a1111"
    assert detect_kind({}).kind == "unknown"
