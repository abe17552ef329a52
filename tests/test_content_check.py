"""The whole-image content check (emif_daemon/resemblance.py) on realistic synthetic photos:
every way a server can answer something other than the picture fails, every legitimate pass
passes, on sources with a flat top eighth and on sources with a busy one (tests/scenes.py;
`python -m tests.scenes` prints the score table)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from emif_daemon.servers.resemblance import (
    LookCache,
    blank_problem,
    compare,
    look,
    look_image,
    pass_problem,
)
from tests import scenes


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@pytest.mark.slow
def test_every_destroyed_answer_fails_and_every_legitimate_pass_passes() -> None:
    found = scenes.rows()
    assert {r.kind for r in found} == set(scenes.KINDS)
    wrong = [(r.kind, r.answer, r.scores) for r in found if not r.right]
    assert wrong == [], scenes.table(found)
    failed = [r for r in found if not r.legitimate]
    assert len(failed) == len(scenes.KINDS) * len(scenes.DESTROYED)
    for r in failed:  # the reason gives the scores and the key that sets each threshold
        assert r.verdict is not None
        assert "upscale.min_resemblance" in r.verdict or "upscale.min_detail_ratio" in r.verdict
        assert f"{min(r.scores.resemblance, r.scores.detail_ratio):.2f}" in r.verdict
    legit = [r for r in found if r.legitimate]
    assert min(r.scores.resemblance for r in legit) > 0.9
    assert min(r.scores.detail_ratio for r in legit) > 0.8


def test_the_flat_top_scenes_really_have_a_flat_top_eighth() -> None:
    """The premise: where the old top-band check saw only a wall, a studio backdrop."""
    for kind in scenes.KINDS:
        img = scenes.scene(kind, 512)
        whole, top = look_image(img).detail, scenes.top_detail(img)
        if kind in scenes.FLAT_TOP:
            assert top < 1.5 < whole, kind
        else:
            assert top > 5, kind


def test_png_bytes_are_decoded_once_into_what_the_check_needs() -> None:
    img = scenes.scene("street", 256)
    seen = look(png(img))
    assert seen == look_image(img)
    assert len(seen.thumb) == 32 * 32
    assert seen.size == (256, 256)
    assert look(png(img.convert("RGBA"))) == seen
    assert look(png(img.convert("P"))).detail == pytest.approx(seen.detail, rel=0.25)
    with pytest.raises(ValueError, match="cannot decode"):
        look(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)


def test_a_txt2img_answer_of_one_colour_or_without_detail_is_no_picture() -> None:
    black = look_image(Image.new("RGB", (1024, 1024), (0, 0, 0)))
    assert blank_problem(black, min_detail=1.0) == "it is one colour (RGB 0, 0, 0) all over"
    smear = look_image(scenes.flat(scenes.scene("room", 512), "room", 1))
    reason = blank_problem(smear, min_detail=1.0)
    assert reason is not None
    assert reason.startswith("it is flat")
    assert "generate.min_detail 1" in reason
    for kind in scenes.KINDS:
        assert blank_problem(look_image(scenes.scene(kind, 1024)), min_detail=1.0) is None
    assert blank_problem(black, min_detail=0) is None  # 0: off


def test_a_flat_source_is_not_failed_for_a_flat_answer_and_thresholds_of_0_are_off() -> None:
    flat = look_image(Image.new("RGB", (256, 256), (90, 90, 90)))
    also = look_image(Image.new("RGB", (512, 512), (91, 90, 90)))
    assert pass_problem(compare(flat, also), min_resemblance=0.5, min_detail_ratio=0.5) is None
    street = look_image(scenes.scene("street", 256))
    scores = compare(street, also)
    assert pass_problem(scores, min_resemblance=0, min_detail_ratio=0) is None
    only_detail = pass_problem(scores, min_resemblance=0, min_detail_ratio=0.5)
    assert only_detail is not None
    assert "min_resemblance" not in only_detail


def test_the_cache_keeps_the_latest_looks() -> None:
    cache = LookCache(size=2)
    seen = look_image(Image.new("RGB", (8, 8)))
    for key in ("a", "b", "c"):
        cache.put(key, seen)
    assert cache.get("a") is None
    assert cache.get("c") is seen
