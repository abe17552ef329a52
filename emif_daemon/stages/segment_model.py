"""Segment Anything in the segment stage's child process: the only module importing torch
besides sam_decoder, the layer it uses over SAM's mask decoder.

Speed without changing the result (docs/segment.md#the-1024-fast-path): the generator runs on
the 1024 copy made by SAM's own ResizeLongestSide, decodes the point grid with the decoder's
image side computed once (SharedDecoder), drops candidates by predicted IoU before making any
mask, and brings only the kept masks to source size through the same ``postprocess_masks``.
Out of memory (docs/segment.md#out-of-memory): the image is tried again with half the decode
batch, down to 1, then on the CPU, each step reported through ``notify``.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
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
from torch.nn import functional as F

from emif_daemon.errors import PermanentItemError, StageUnavailable
from emif_daemon.stages.sam_decoder import SharedDecoder, self_check
from emif_daemon.stages.segment_spec import ModelSpec, retry_steps

WORKING_SIDE = 1024  # SAM's encoder input size
# Prompts decoded per batch when the config says 0; batching does not change which masks come
# out. On a CPU, masks are also made and post-processed one prompt at a time: tensors of a few
# MB are reused by the allocator, larger ones are fresh memory, page-faulted in on every batch
# (a third of the time at 16 prompts per batch).
AUTO_BATCH = {"cpu": 4, "mps": 16, "cuda": 64}
PIECE = {"cpu": 1}  # prompts per piece of a batch; elsewhere the whole batch


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


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, MPS's "MPS backend out of memory", or the CPU allocator's."""
    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in text or "can't allocate memory" in text)
    )


def free_memory(device: str) -> None:
    """Hand cached blocks back, so that a retry (or Draw Things) can have them."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    elif device == "mps":
        torch.mps.empty_cache()


class FastGenerator(SamAutomaticMaskGenerator):  # type: ignore[misc]  # segment-anything is untyped
    """SamAutomaticMaskGenerator that decodes with the decoder's image side computed once per
    image, filters by predicted IoU before making masks and keeps the low-res logits of each
    candidate (no crop layers: the whole image is one crop)."""

    def __init__(self, model: Sam, piece: int = 0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.decoder = SharedDecoder(model)
        self._decoder_for: Any = None  # the image embedding `decoder` was set for
        self.piece = piece  # prompts whose masks are made and post-processed at a time; 0: all
        self.decoded = 0  # batches begun

    def _decode(self, points: np.ndarray, im_size: tuple[int, ...]) -> tuple[Any, Any, Any]:
        """Low-res logits (P, 3, 256, 256) and IoU (P, 3) of the prompts (rows) that can pass."""
        self.decoded += 1
        predictor, model = self.predictor, self.predictor.model
        # float32: MPS has no float64, and apply_coords returns float64.
        coords = predictor.transform.apply_coords(points, im_size).astype(np.float32)
        in_points = torch.as_tensor(coords, device=predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        sparse, _ = model.prompt_encoder(
            points=(in_points[:, None, :], in_labels[:, None]), boxes=None, masks=None
        )
        if self._decoder_for is not predictor.features:
            self.decoder.set_image(predictor.features)
            self._decoder_for = predictor.features
        decoded = self.decoder.decode(sparse)
        passing = decoded.iou_preds > self.pred_iou_thresh
        if self.pred_iou_thresh <= 0.0:  # AMG's switch: no IoU filter at all
            passing = torch.ones_like(passing)
        rows = torch.nonzero(passing.any(1))[:, 0]
        piece = self.piece or max(1, len(rows))
        masks = [self.decoder.masks(decoded, part) for part in torch.split(rows, piece)]
        low_res = torch.cat(masks) if len(masks) != 1 else masks[0]
        return low_res, decoded.iou_preds[rows], rows.cpu().numpy()

    def _stability_and_boxes(self, low_res: Any) -> tuple[Any, Any]:
        """Each candidate's stability score and box at the working size, a piece at a time,
        from ``postprocess_masks``'s first interpolation: its second is an exact copy here,
        the working copy being at the encoder's size already. A candidate the stability
        filter drops next gets no box."""
        predictor, model = self.predictor, self.predictor.model
        assert tuple(predictor.input_size) == tuple(predictor.original_size)
        square, (h, w) = (model.image_encoder.img_size,) * 2, predictor.input_size
        threshold, scores, boxes = model.mask_threshold, [], []
        for part in low_res.split(3 * self.piece or max(1, len(low_res))):
            logits = F.interpolate(part[:, None], square, mode="bilinear", align_corners=False)
            logits = logits[:, 0, :h, :w]
            score = calculate_stability_score(logits, threshold, self.stability_score_offset)
            thresh = self.stability_score_thresh  # 0: no filter, every candidate (...) passes
            passing = score >= thresh if thresh else ...
            box = torch.zeros(len(part), 4, dtype=torch.long, device=part.device)
            box[passing] = batched_mask_to_box(logits[passing] > threshold).long()
            scores.append(score)
            boxes.append(box)
        return torch.cat(scores), torch.cat(boxes)

    def _process_batch(
        self,
        points: np.ndarray,
        im_size: tuple[int, ...],
        crop_box: list[int],
        orig_size: tuple[int, ...],
    ) -> MaskData:
        orig_h, orig_w = orig_size
        low_res, iou_preds, rows = self._decode(points, im_size)
        data = MaskData(
            low_res=low_res.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=torch.as_tensor(points[rows].repeat(low_res.shape[1], axis=0)),
        )
        if self.pred_iou_thresh > 0.0:  # before upsampling: the same filter, far less work
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        data["stability_score"], data["boxes"] = self._stability_and_boxes(data["low_res"])
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            data.filter(keep)
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

    def __init__(self, spec: ModelSpec, notify: Callable[..., None] | None = None) -> None:
        self.spec = spec
        self.notify = notify or (lambda event, **fields: None)  # (event, **fields) → a log line
        self.model, self.home = build_model(spec)
        self_check(self.model)  # the layer over SAM's decoder still matches it
        self.device = self.home  # where the model is now; the CPU after a fallback
        self.batch = spec.points_per_batch or AUTO_BATCH.get(self.home, 64)
        self.generator = self._generator(self.batch)
        self.resize = ResizeLongestSide(WORKING_SIDE)
        self.used = (self.home, self.batch)  # device and decode batch of the last image

    def _generator(self, batch: int) -> FastGenerator:
        piece = PIECE.get(self.device, 0)
        settings = self.spec.generator_settings()
        return FastGenerator(self.model, piece, points_per_batch=batch, **settings)

    def _place(self, device: str, batch: int) -> None:
        if device != self.device:
            self.device = ""  # a move cut short by an error leaves the model split
            self.model.to(device)
            self.device = device
            self.generator = self._generator(batch)
        self.generator.points_per_batch = batch

    def segment(self, image: np.ndarray) -> list[Segment]:
        """Masks at the image's size. Out of memory: again with half the decode batch, down
        to 1, then on the CPU, where the model stays for this image only. Out of memory
        before any batch was decoded (the encoder's): the batch is not the cause, the CPU next."""
        cpu_batch = self.spec.points_per_batch or AUTO_BATCH["cpu"]
        steps = retry_steps(self.home, self.batch, cpu_batch)
        while len(steps) > 1:
            device, batch = steps.pop(0)
            try:
                return self._attempt(image, device, batch)
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
            steps = steps if self.generator.decoded else steps[-1:]
            free_memory(device)  # out of the except block, whose traceback held the tensors
            self.notify(
                "segment_out_of_memory",
                device=device,
                batch=batch,
                error=error,
                retry_device=steps[0][0],
                retry_batch=steps[0][1],
            )
        return self._attempt(image, *steps[0])

    @torch.inference_mode()
    def _attempt(self, image: np.ndarray, device: str, batch: int) -> list[Segment]:
        self._place(device, batch)
        self.generator.decoded = 0
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
        self.used = (device, batch)
        return out


def naive_masks(model: Sam, image: np.ndarray, spec: ModelSpec) -> list[dict[str, Any]]:
    """The stock generator on the full-size image: the reference for tests and benchmarks."""
    batch = spec.points_per_batch or 64  # the stock default
    gen = SamAutomaticMaskGenerator(model, points_per_batch=batch, **spec.generator_settings())
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
        square = spec.cutout == "square"
        box = square_box(bbox, spec.padding, width, height) if square else (0, 0, width, height)
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
        "device": segmenter.used[0],
        "decode_batch": segmenter.used[1],
        "segments": records,
        "model_seconds": round(time.monotonic() - started, 3),
    }


def serve(conn: Any, spec: ModelSpec) -> None:
    """Child process main: load once, then answer (source, out_dir) requests until EOF;
    events on the way go to the parent as ("log", event, fields), for the daemon's log."""
    try:
        segmenter = Segmenter(spec, lambda event, **fields: conn.send(("log", event, fields)))
    except StageUnavailable as exc:
        conn.send(("unavailable", str(exc)))
        return
    conn.send(("ready", segmenter.home))
    while True:
        try:
            source, out_dir = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", segment_file(segmenter, Path(source), Path(out_dir))))
        except PermanentItemError as exc:
            conn.send(("permanent", str(exc)))
        except Exception as exc:
            conn.send(("transient", f"{type(exc).__name__}: {exc}"))
