"""Segment Anything cut-outs (docs/segment.md), with a tiny SAM built from
segment_anything's own modules and random weights."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import sam_model_registry

from emif_daemon.config.schema import parse_config
from emif_daemon.daemon.wiring import claim_store, make_kit
from emif_daemon.engine.outcomes import RunOutcome
from emif_daemon.engine.runner import Engine, Timing
from emif_daemon.errors import StageUnavailable
from emif_daemon.retry import RetryPolicy
from emif_daemon.stages.sam_decoder import SharedDecoder, check_internals, self_check
from emif_daemon.stages.segment import ModelSpec, SegmentStage, checkpoint_problem
from emif_daemon.stages.segment_model import (
    Segmenter,
    build_model,
    cutout,
    mask_bbox,
    naive_masks,
    square_box,
)
from emif_daemon.stages.segment_spec import retry_steps
from tests import sdapi_server
from tests.helpers import (
    fast_sections,
    log_lines,
    run_emif,
    spawn,
    tiny_cmd,
    wait_for,
    write_config,
)
from tests.tiny_sam import ROOM_VARIABLE, build, save_checkpoint

TINY = "tests.tiny_sam:build"


def shapes_image(size: int = 2048) -> np.ndarray:
    """A synthetic photo: a red rectangle, a green bar, a blue disc on a grey-blue ground."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = (30, 60, 90)
    s = size / 2048
    img[int(300 * s) : int(900 * s), int(400 * s) : int(1200 * s)] = (250, 20, 20)
    img[int(1200 * s) : int(1900 * s), int(200 * s) : int(700 * s)] = (20, 250, 20)
    yy, xx = np.mgrid[:size, :size]
    img[((yy - 1400 * s) ** 2 + (xx - 1500 * s) ** 2) < (350 * s) ** 2] = (20, 20, 250)
    return img


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    save_checkpoint(str(path))
    return path


# -- cut-out geometry with known shapes (pure) -------------------------------------------


def test_bbox_counts_both_end_pixels() -> None:
    mask = np.zeros((10, 20), bool)
    mask[2:5, 3:7] = True  # 4 wide, 3 tall
    assert mask_bbox(mask) == (3, 2, 4, 3)


@pytest.mark.parametrize(
    ("bbox", "expected"),
    [
        ((100, 100, 200, 100), (80, 30, 240, 240)),  # padded 10 % each side, centred
        ((0, 0, 50, 50), (0, 0, 60, 60)),  # moved into the image at a corner
        ((1990, 1990, 58, 58), (1978, 1978, 70, 70)),
        ((0, 0, 2048, 2048), (0, 0, 2048, 2048)),  # clamped to the image
    ],
)
def test_square_box_is_padded_square_and_inside(
    bbox: tuple[int, int, int, int], expected: tuple[int, int, int, int]
) -> None:
    box = square_box(bbox, 0.1, 2048, 2048)
    assert box == expected
    x, y, w, h = box
    assert w == h
    assert x >= 0
    assert y >= 0
    assert x + w <= 2048
    assert y + h <= 2048
    assert x <= bbox[0]
    assert y <= bbox[1]
    assert x + w >= bbox[0] + bbox[2]
    assert y + h >= bbox[1] + bbox[3]


def test_cutout_alpha_is_the_mask_and_colour_is_kept_inside() -> None:
    rgb = shapes_image(256)
    mask = np.all(rgb == (250, 20, 20), axis=-1)
    box = square_box(mask_bbox(mask), 0.05, 256, 256)
    img = np.asarray(cutout(rgb, mask, box))
    x, y, w, h = box
    assert img.shape == (h, w, 4)
    assert np.array_equal(img[..., 3] == 255, mask[y : y + h, x : x + w])
    assert np.all(img[img[..., 3] == 255][:, :3] == (250, 20, 20))
    assert np.all(img[img[..., 3] == 0][:, :3] == 0)


# -- the model ------------------------------------------------------------------------------


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def test_fast_path_masks_agree_with_the_naive_2048_generator(checkpoint: Path) -> None:
    """≥ 95 % of the masks on each side have a partner with IoU ≥ 0.95 on the other.

    NMS is off so that every candidate of both paths is compared, not just the survivors.
    """
    spec = ModelSpec(
        "vit_b",
        str(checkpoint),
        "cpu",
        TINY,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
    )
    segmenter = Segmenter(spec)
    image = shapes_image()
    fast = segmenter.segment(image)
    naive = naive_masks(segmenter.model, image, spec)
    assert len(fast) >= 40
    assert len(naive) >= 40

    def partner(mask: np.ndarray, point: list[float], score: float, pool: list[Any]) -> bool:
        near = [m for p, s, m in pool if np.allclose(p, point, atol=1) and abs(s - score) < 1e-4]
        return any(iou(mask, m) >= 0.95 for m in near)

    fast_pool = [(s.point, s.predicted_iou, s.mask) for s in fast]
    naive_pool = [(r["point_coords"][0], r["predicted_iou"], r["segmentation"]) for r in naive]
    fast_ok = sum(partner(m, p, s, naive_pool) for p, s, m in fast_pool)
    naive_ok = sum(partner(m, p, s, fast_pool) for p, s, m in naive_pool)
    assert fast_ok >= 0.95 * len(fast)
    assert naive_ok >= 0.95 * len(naive)


# -- the shared decoder ---------------------------------------------------------------------


def test_shared_decoder_gives_sams_mask_decoder_logits() -> None:
    """On vit_b's decoder (random weights): the same logits and IoU as ``MaskDecoder`` for a
    batch of point prompts, and a subset of rows gives those rows' masks."""
    torch.manual_seed(2)
    sam = sam_model_registry["vit_b"]().eval()
    embedding = torch.randn(1, 256, 64, 64)
    points = torch.rand(12, 1, 2) * 1024
    labels = torch.ones(12, 1, dtype=torch.int)
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        pe = sam.prompt_encoder.get_dense_pe()
        masks, iou_preds = sam.mask_decoder(embedding, pe, sparse, dense, multimask_output=True)
        shared = SharedDecoder(sam)
        shared.set_image(embedding)
        decoded = shared.decode(sparse)
        ours = shared.masks(decoded, torch.arange(12))
        some = shared.masks(decoded, torch.tensor([3, 7]))
    scale = float(masks.abs().max())
    assert float((ours - masks).abs().max()) <= 1e-4 * scale
    assert float((decoded.iou_preds - iou_preds).abs().max()) <= 1e-5
    assert torch.allclose(some, ours[[3, 7]], rtol=0, atol=1e-6 * scale)
    assert self_check(sam) <= 1e-5


def test_an_internal_that_moved_is_named_with_the_pinned_version() -> None:
    sam = build_tiny()
    del sam.mask_decoder.transformer.layers[1].cross_attn_image_to_token.q_proj
    with pytest.raises(StageUnavailable) as caught:
        check_internals(sam)
    message = str(caught.value)
    assert "mask_decoder.transformer.layers[1].cross_attn_image_to_token.q_proj" in message
    assert "segment-anything==1.0" in message


def build_tiny() -> Any:

    torch.manual_seed(0)
    return build().eval()


# -- out of memory --------------------------------------------------------------------------


def test_out_of_memory_plan_halves_the_batch_down_to_one_then_uses_the_cpu() -> None:
    assert retry_steps("mps", 16, 8) == [
        ("mps", 16),
        ("mps", 8),
        ("mps", 4),
        ("mps", 2),
        ("mps", 1),
        ("cpu", 8),
    ]
    assert retry_steps("cuda", 6, 8) == [("cuda", 6), ("cuda", 3), ("cuda", 1), ("cpu", 8)]
    assert retry_steps("cpu", 4, 8) == [("cpu", 4), ("cpu", 2), ("cpu", 1)]


class FakeAccelerator(Segmenter):
    """A Segmenter whose "cuda" is the CPU with a fake allocator that has no room at all."""

    places: list[str]

    def _place(self, device: str, batch: int) -> None:
        self.places.append(device)
        encoder = self.model.prompt_encoder
        encoder.room = 0 if device == "cpu" else -1  # -1: not even one prompt
        encoder.error = torch.OutOfMemoryError
        super()._place("cpu", batch)


def test_out_of_memory_on_the_device_ends_on_the_cpu_with_an_event_each_step(
    checkpoint: Path,
) -> None:
    spec = ModelSpec(
        "vit_b",
        str(checkpoint),
        "cpu",
        TINY,
        points_per_side=4,
        points_per_batch=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    reference = Segmenter(spec).segment(shapes_image(256))
    events: list[tuple[str, dict[str, Any]]] = []
    segmenter = FakeAccelerator(spec, lambda event, **fields: events.append((event, fields)))
    segmenter.places = []
    segmenter.home = "cuda"
    masks = segmenter.segment(shapes_image(256))
    assert [e for e, _ in events] == ["segment_out_of_memory"] * 3
    steps = [(f["device"], f["batch"], f["retry_device"], f["retry_batch"]) for _, f in events]
    assert steps == [("cuda", 4, "cuda", 2), ("cuda", 2, "cuda", 1), ("cuda", 1, "cpu", 4)]
    assert all(f["error"].startswith("OutOfMemoryError: MPS backend out of") for _, f in events)
    assert segmenter.used == ("cpu", 4)
    assert segmenter.places == ["cuda", "cuda", "cuda", "cpu"]
    assert len(masks) == len(reference)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(masks, reference, strict=True))
    segmenter.segment(shapes_image(256))  # the next image starts on the device again
    assert segmenter.places[4] == "cuda"


def test_out_of_memory_in_the_encoder_goes_straight_to_the_cpu(checkpoint: Path) -> None:
    """Before any batch is decoded, a smaller batch cannot help: one event, then the CPU."""
    spec = ModelSpec(
        "vit_b",
        str(checkpoint),
        "cpu",
        TINY,
        points_per_side=4,
        points_per_batch=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    events: list[dict[str, Any]] = []
    segmenter = FakeAccelerator(spec, lambda event, **fields: events.append(fields))
    segmenter.places = []
    segmenter.home = "cuda"
    encoder = segmenter.model.image_encoder
    forward = encoder.forward

    def short_of_memory(x: torch.Tensor) -> torch.Tensor:
        if segmenter.places[-1] != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 768.00 MiB.")
        out: torch.Tensor = forward(x)
        return out

    encoder.forward = short_of_memory
    assert segmenter.segment(shapes_image(256))
    assert [(e["device"], e["batch"], e["retry_device"], e["retry_batch"]) for e in events] == [
        ("cuda", 4, "cpu", 4)
    ]
    assert segmenter.used == ("cpu", 4)


def test_other_errors_are_not_retried(checkpoint: Path) -> None:
    spec = ModelSpec("vit_b", str(checkpoint), "cpu", TINY, points_per_side=4)
    events: list[str] = []
    segmenter = Segmenter(spec, lambda event, **fields: events.append(event))
    segmenter.model.prompt_encoder.room = -1
    segmenter.model.prompt_encoder.error = ValueError
    with pytest.raises(ValueError, match="MPS backend out of memory"):
        segmenter.segment(shapes_image(256))
    assert events == []


def test_a_real_format_checkpoint_loads_through_the_users_code_path(tmp_path: Path) -> None:
    """torch.save of a vit_b state dict, loaded by model type like Meta's files."""
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.manual_seed(1)
    reference = sam_model_registry["vit_b"]()
    torch.save(reference.state_dict(), path)
    model, device = build_model(ModelSpec("vit_b", str(path), "cpu"))
    assert device == "cpu"
    name = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(model.state_dict()[name], reference.state_dict()[name])
    with pytest.raises(StageUnavailable, match="does not fit the model type"):
        build_model(ModelSpec("vit_l", str(path), "cpu"))


def test_unreadable_and_missing_checkpoints_name_path_file_and_url(tmp_path: Path) -> None:
    bad = tmp_path / "sam_vit_b_01ec64.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(StageUnavailable, match="cannot be read"):
        build_model(ModelSpec("vit_b", str(bad), "cpu"))
    problem = checkpoint_problem(bad, "vit_b")
    assert problem is not None
    assert "is 16 bytes, sam_vit_b_01ec64.pth has 375042383" in problem
    missing = checkpoint_problem(tmp_path / "nope.pth", "vit_h")
    assert missing is not None
    assert str(tmp_path / "nope.pth") in missing
    assert "sam_vit_h_4b8939.pth" in missing
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in missing


# -- the stage ------------------------------------------------------------------------------


def run_segment_stage(root: Path, checkpoint: Path, cutout_kind: str) -> Path:
    sections = fast_sections(
        root,
        segment={
            "enabled": True,
            "checkpoint": str(checkpoint),
            "device": "cpu",
            "points_per_side": 4,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
            "min_area_fraction": 0.001,
            "cutout": cutout_kind,
            "padding": 0.05,
        },
    )
    kit = make_kit(parse_config(sections, base_dir=root))
    layout = kit.ctx.layout
    source = layout.upscaled / "Italy" / "family" / "Italy_family_1_1_upscaled_1.png"
    source.parent.mkdir(parents=True)
    Image.fromarray(shapes_image(512)).save(source)
    stage = SegmentStage(kit.ctx, kit.cfg.segment, builder=TINY)
    engine = Engine(
        [stage],
        claim_store(kit.cfg, kit.ctx),
        layout.failed,
        retry=RetryPolicy(max_attempts=1),
        timing=Timing(rescan_s=0.05, heartbeat_s=0.2),
        once=True,
    )
    assert engine.run() == RunOutcome.DRAINED
    return layout.segments / "Italy" / "family" / "Italy_family_1_1_upscaled_1"


@pytest.mark.parametrize("cutout_kind", ["square", "canvas"])
def test_cutouts_alpha_equals_the_generators_masks(
    root: Path, checkpoint: Path, cutout_kind: str
) -> None:
    folder = run_segment_stage(root, checkpoint, cutout_kind)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model_type"] == "vit_b" or manifest["model_type"] == "vit_h"
    assert len(manifest["checkpoint_sha256"]) == 64
    assert manifest["device"] == "cpu"
    assert manifest["image_size"] == [512, 512]
    assert manifest["segments"], "no cut-out"
    spec = ModelSpec(
        "vit_b",
        str(checkpoint),
        "cpu",
        TINY,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    masks = [s.mask for s in Segmenter(spec).segment(shapes_image(512))]
    files = sorted(p.name for p in folder.glob("*.png"))
    assert files == [
        f"Italy_family_1_1_upscaled_1_seg_{n:03}.png" for n in range(1, len(files) + 1)
    ]
    assert len(files) == len(manifest["segments"])
    for seg in manifest["segments"]:
        x, y, w, h = seg["bbox"]
        assert x >= 0
        assert y >= 0
        assert x + w <= 512
        assert y + h <= 512
        cx, cy, cw, ch = seg["crop_box"]
        with Image.open(folder / seg["file"]) as im:
            assert im.mode == "RGBA"
            alpha = np.asarray(im)[..., 3] == 255
        if cutout_kind == "canvas":
            assert (cx, cy, cw, ch) == (0, 0, 512, 512)
        else:
            assert cw == ch
        assert any(np.array_equal(alpha, m[cy : cy + ch, cx : cx + cw]) for m in masks)
        assert alpha.sum() == seg["area"]
    leftovers = [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_missing_checkpoint_disables_segment_only(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    missing = root.parent / "models" / "sam_vit_h_4b8939.pth"
    sections = fast_sections(
        root, server={"url": sdapi.url}, segment={"enabled": True, "checkpoint": str(missing)}
    )
    extra = (
        "[generate.payload]\nwidth = 128\nheight = 128\n"
        "[upscale]\nexpect_size = [256, 256]\n"
        '[[upscale.passes]]\nupscaler = "4x_ultrasharp_f16.ckpt"\nupscaler_scale = 2\n'
        "strength = 0.0\n"
    )
    cfg = write_config(root.parent / "c.toml", sections, extra)
    (root / "queue").mkdir(exist_ok=True)
    (root / "queue" / "a.json").write_text(
        json.dumps({"jobs": [{"nation": "N", "category": "c", "prompt": "p", "count": 2}]})
    )
    result = run_emif("run", "--once", "--config", str(cfg))
    assert result.returncode == 1
    assert len(list((root / "UPSCALED_IMAGES").rglob("*.png"))) == 2
    errors = [e for e in log_lines(root) if e["event"] == "stage_unavailable"]
    assert len(errors) == 1
    assert str(missing) in errors[0]["reason"]
    assert "dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in errors[0]["reason"]
    status = run_emif("status", "--config", str(cfg))
    assert "segment unavailable on" in status.stdout
    as_json = json.loads(run_emif("status", "--json", "--config", str(cfg)).stdout)
    host = next(iter(as_json["hosts"].values()))
    assert "segment" in host["unavailable"]
    assert as_json["stages"]["segment"]["pending"] == 2


def test_running_daemon_segments_new_upscales_alongside_the_other_stages(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer, checkpoint: Path
) -> None:
    sections = fast_sections(
        root,
        server={"url": sdapi.url},
        segment={
            "enabled": True,
            "checkpoint": str(checkpoint),
            "device": "cpu",
            "points_per_side": 4,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
        },
    )
    extra = (
        "[generate.payload]\nwidth = 128\nheight = 128\n"
        "[upscale]\nexpect_size = [256, 256]\n"
        '[[upscale.passes]]\nupscaler = "4x_ultrasharp_f16.ckpt"\nupscaler_scale = 2\n'
        "strength = 0.0\n"
    )
    cfg = write_config(root.parent / "c.toml", sections, extra)
    proc = spawn(tiny_cmd(cfg))
    manifests = root / "SEGMENTS"
    try:
        (root / "queue").mkdir(exist_ok=True)
        (root / "queue" / "a.json").write_text(
            json.dumps({"jobs": [{"nation": "N", "category": "c", "prompt": "p", "count": 2}]})
        )
        wait_for(lambda: len(list(manifests.rglob("manifest.json"))) == 2, timeout=120)
        extra_png = root / "UPSCALED_IMAGES" / "M" / "c" / "hand_made.png"
        extra_png.parent.mkdir(parents=True)
        Image.fromarray(shapes_image(256)).save(extra_png)
        wait_for((manifests / "M" / "c" / "hand_made" / "manifest.json").exists, timeout=120)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    done = [e for e in log_lines(root) if e["event"] == "item_done"]
    assert {e["stage"] for e in done} == {"generate", "upscale", "segment"}


def test_out_of_memory_in_the_child_is_retried_on_smaller_batches_and_logged_by_the_daemon(
    root: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real daemon; its segment child's device has room for 2 prompts per batch."""
    monkeypatch.setenv(ROOM_VARIABLE, "2")  # inherited by the daemon and its child
    sections = fast_sections(
        root,
        generate={"enabled": False},
        upscale={"enabled": False},
        segment={
            "enabled": True,
            "checkpoint": str(checkpoint),
            "device": "cpu",
            "points_per_side": 4,
            "points_per_batch": 8,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
        },
    )
    cfg = write_config(root.parent / "c.toml", sections)
    source = root / "UPSCALED_IMAGES" / "N" / "c" / "big.png"
    source.parent.mkdir(parents=True)
    Image.fromarray(shapes_image(256)).save(source)
    proc = spawn(tiny_cmd(cfg, "--once"))
    assert proc.wait(120) == 0
    manifest = json.loads((root / "SEGMENTS" / "N" / "c" / "big" / "manifest.json").read_text())
    assert manifest["decode_batch"] == 2
    assert manifest["device"] == "cpu"
    assert manifest["segments"]
    lines = log_lines(root)
    oom = [e for e in lines if e["event"] == "segment_out_of_memory"]
    assert [(e["batch"], e["retry_batch"]) for e in oom] == [(8, 4), (4, 2)]
    assert all(e["stage"] == "segment" and "big" in e["item"] for e in oom)
    assert all("MPS backend out of memory" in e["error"] for e in oom)
    assert [e["stage"] for e in lines if e["event"] == "item_done"] == ["segment"]
    assert not [e for e in lines if e["event"] == "item_failed"]
    assert len([e for e in lines if e["event"] == "segment_model_loaded"]) == 1  # no restart
