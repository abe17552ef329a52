"""Segment Anything in the segment stage's child process: the only module importing torch.

Speed without changing the result (docs/segment.md#the-1024-fast-path): SAM's image encoder only
ever sees a 1024-pixel image, but the stock generator run on a 2048² image upsamples and
thresholds every candidate mask (3 per point, 3072 for a 32² grid) at 2048² before
filtering. Here the generator runs on the 1024 copy made by SAM's own ResizeLongestSide,
drops candidates by predicted IoU before any upsampling, keeps each candidate's 256²
logits, and brings only the kept masks to source size through the very same
``postprocess_masks`` call — so a kept mask is bit-for-bit the one the stock generator
would have made.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.platform == "darwin":  # must be set before torch is imported (SAM's NMS on MPS)
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

import numpy as np
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything import automatic_mask_generator as _amg
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    MaskData,
    batched_mask_to_box,
    calculate_stability_score,
    is_box_near_crop_edge,
)
from segment_anything.utils.transforms import ResizeLongestSide

from ..errors import PermanentItemError, StageUnavailable
from .segment_spec import ModelSpec

WORKING_SIDE = 1024  # SAM's encoder input size
# Prompts decoded per batch when the config says 0. The decoder repeats the 64×64×256 image
# embedding per prompt, so on a CPU small batches stay in cache: 66 ms/point at 8 against
# 95 ms at 64 for vit_b on 2 cores. Batching does not change which masks come out.
AUTO_BATCH = {"cpu": 8, "mps": 16, "cuda": 64}


def _nms_on_boxes_device(boxes: Any, scores: Any, idxs: Any, iou_threshold: float) -> Any:
    # PyPI segment-anything 1.0 builds the NMS categories on the CPU while the boxes may be
    # on cuda/mps ("indices should be either on cpu or on the same device"; fixed upstream
    # in PR #41, which never reached PyPI).
    return _ORIGINAL_NMS(boxes, scores.to(boxes.device), idxs.to(boxes.device), iou_threshold)


_ORIGINAL_NMS = _amg.batched_nms
_amg.batched_nms = _nms_on_boxes_device


def pick_device(wanted: str) -> str:
    if wanted != "auto":
        return wanted
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_checkpoint(model: Sam, path: str) -> Sam:
    """Load a state dict saved with torch.save (Meta's format), tensors only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise StageUnavailable(f"segment checkpoint {path} not found") from exc
    except Exception as exc:
        raise StageUnavailable(
            f"segment checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
            "download it again"
        ) from exc
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise StageUnavailable(
            f"segment checkpoint {path} does not fit the model type: {str(exc)[:300]}; "
            "check segment.model_type"
        ) from exc
    return model


def build_model(spec: ModelSpec) -> tuple[Sam, str]:
    if spec.builder:
        module, _, func = spec.builder.partition(":")
        model = getattr(importlib.import_module(module), func)()
    else:
        model = sam_model_registry[spec.model_type](checkpoint=None)
    load_checkpoint(model, spec.checkpoint)
    device = pick_device(spec.device)
    model.to(device=device, dtype=torch.float32).eval()  # MPS has no float64
    return model, device


class FastGenerator(SamAutomaticMaskGenerator):  # type: ignore[misc]  # segment-anything is untyped
    """SamAutomaticMaskGenerator that filters by predicted IoU before upsampling and keeps
    the low-res logits of each candidate (no crop layers: the whole image is one crop)."""

    def _process_batch(
        self,
        points: np.ndarray,
        im_size: tuple[int, ...],
        crop_box: list[int],
        orig_size: tuple[int, ...],
    ) -> MaskData:
        orig_h, orig_w = orig_size
        predictor = self.predictor
        model = predictor.model
        # float32: MPS has no float64, and apply_coords returns float64.
        coords = predictor.transform.apply_coords(points, im_size).astype(np.float32)
        in_points = torch.as_tensor(coords, device=predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        sparse, dense = model.prompt_encoder(
            points=(in_points[:, None, :], in_labels[:, None]), boxes=None, masks=None
        )
        low_res, iou_preds = model.mask_decoder(
            image_embeddings=predictor.features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        data = MaskData(
            low_res=low_res.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=torch.as_tensor(points.repeat(low_res.shape[1], axis=0)),
        )
        if self.pred_iou_thresh > 0.0:  # before upsampling: the same filter, far less work
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        masks = model.postprocess_masks(
            data["low_res"][:, None], predictor.input_size, predictor.original_size
        )[:, 0]
        data["stability_score"] = calculate_stability_score(
            masks, model.mask_threshold, self.stability_score_offset
        )
        if self.stability_score_thresh > 0.0:
            keep = data["stability_score"] >= self.stability_score_thresh
            data.filter(keep)
            masks = masks[keep]
        masks = masks > model.mask_threshold
        data["boxes"] = batched_mask_to_box(masks)
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            data.filter(keep)
            masks = masks[keep]
        # No RLEs: kept masks are rebuilt from their logits at source size. The library's
        # crop step only counts this list (and deep-copies it, slowly, when it is real).
        data["rles"] = [None] * len(data["boxes"])
        return data


@dataclass
class Segment:
    mask: np.ndarray  # bool, source size
    predicted_iou: float
    stability_score: float
    point: list[float]


class Segmenter:
    """A loaded model and its generator; `segment` maps an RGB array to masks at its size."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.model, self.device = build_model(spec)
        self.generator = FastGenerator(
            self.model,
            points_per_side=spec.points_per_side,
            points_per_batch=spec.points_per_batch or AUTO_BATCH.get(self.device, 64),
            pred_iou_thresh=spec.pred_iou_thresh,
            stability_score_thresh=spec.stability_score_thresh,
            box_nms_thresh=spec.box_nms_thresh,
            output_mode="uncompressed_rle",
        )
        self.resize = ResizeLongestSide(WORKING_SIDE)

    @torch.inference_mode()
    def segment(self, image: np.ndarray) -> list[Segment]:
        height, width = image.shape[:2]
        working = self.resize.apply_image(image)  # the copy SAM's encoder would see anyway
        data = self.generator._generate_masks(working)
        input_size = tuple(working.shape[:2])
        out = []
        for i in range(len(data["iou_preds"])):
            logits = torch.as_tensor(data["low_res"][i], device=self.device)[None, None]
            full = self.model.postprocess_masks(logits, input_size, (height, width))[0, 0]
            out.append(
                Segment(
                    mask=(full > self.model.mask_threshold).cpu().numpy(),
                    predicted_iou=float(data["iou_preds"][i]),
                    stability_score=float(data["stability_score"][i]),
                    point=[float(v) * width / input_size[1] for v in data["points"][i]],
                )
            )
        return out


def naive_masks(model: Sam, image: np.ndarray, spec: ModelSpec) -> list[dict[str, Any]]:
    """The stock generator on the full-size image: the reference for tests and benchmarks."""
    gen = SamAutomaticMaskGenerator(
        model,
        points_per_side=spec.points_per_side,
        points_per_batch=spec.points_per_batch or 64,  # the stock default
        pred_iou_thresh=spec.pred_iou_thresh,
        stability_score_thresh=spec.stability_score_thresh,
        box_nms_thresh=spec.box_nms_thresh,
    )
    with torch.no_grad():
        masks: list[dict[str, Any]] = gen.generate(image)
    return masks


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, w, h) in pixels, w and h counting both end pixels (AMG's are one short)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)


def square_box(
    bbox: tuple[int, int, int, int], padding: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """The bbox padded by `padding` of its longer side, made square, moved into the image
    (narrower only where the image itself is smaller than the square)."""
    x, y, w, h = bbox
    side = round(max(w, h) * (1 + 2 * padding))
    side_w, side_h = min(side, width), min(side, height)
    x0 = min(max(round(x + (w - side_w) / 2), 0), width - side_w)
    y0 = min(max(round(y + (h - side_h) / 2), 0), height - side_h)
    return x0, y0, side_w, side_h


def cutout(rgb: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    """RGBA crop whose alpha is the mask; colour is cleared where it is transparent."""
    x, y, w, h = box
    alpha = mask[y : y + h, x : x + w]
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    rgba[..., :3] = rgb[y : y + h, x : x + w] * alpha[..., None]
    rgba[..., 3] = alpha.astype(np.uint8) * 255
    return Image.fromarray(rgba, "RGBA")


def segment_file(segmenter: Segmenter, source: Path, out_dir: Path) -> dict[str, Any]:
    """Cut `source` into RGBA PNGs in `out_dir`; returns the manifest's segment list."""
    started = time.monotonic()
    spec = segmenter.spec
    try:
        with Image.open(source) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise PermanentItemError(f"cannot read {source} as an image: {exc}") from exc
    height, width = rgb.shape[:2]
    min_area = spec.min_area_fraction * width * height
    sized = [(int(s.mask.sum()), s) for s in segmenter.segment(rgb)]
    kept = sorted((p for p in sized if p[0] >= max(min_area, 1)), key=lambda p: -p[0])
    stem = source.stem
    records = []
    for n, (area, seg) in enumerate(kept, 1):
        bbox = mask_bbox(seg.mask)
        box = (
            square_box(bbox, spec.padding, width, height)
            if spec.cutout == "square"
            else (0, 0, width, height)
        )
        name = f"{stem}_seg_{n:03}.png"
        cutout(rgb, seg.mask, box).save(out_dir / name)
        records.append(
            {
                "file": name,
                "bbox": list(bbox),
                "crop_box": list(box),
                "area": area,
                "predicted_iou": round(seg.predicted_iou, 5),
                "stability_score": round(seg.stability_score, 5),
                "point": [round(v, 1) for v in seg.point],
            }
        )
    return {
        "image_size": [width, height],
        "working_size": WORKING_SIDE,
        "device": segmenter.device,
        "segments": records,
        "model_seconds": round(time.monotonic() - started, 3),
    }


def serve(conn: Any, spec: ModelSpec) -> None:
    """Child process main: load once, then answer (source, out_dir) requests until EOF."""
    try:
        segmenter = Segmenter(spec)
    except StageUnavailable as exc:
        conn.send(("unavailable", str(exc)))
        return
    conn.send(("ready", segmenter.device))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        source, out_dir = request
        try:
            conn.send(("ok", segment_file(segmenter, Path(source), Path(out_dir))))
        except PermanentItemError as exc:
            conn.send(("permanent", str(exc)))
        except Exception as exc:
            conn.send(("transient", f"{type(exc).__name__}: {exc}"))
