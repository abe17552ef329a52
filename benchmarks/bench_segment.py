"""Segment stage vs SamAutomaticMaskGenerator run naively on the 2048² image.

Same model (random weights: Meta's cannot be downloaded here), same settings, same image,
one process. Prints seconds for the stock generator, for the segment stage as it was before
the shared decoder (SAM's own mask decoder, at its batch size then) and for the stage
(docs/segment.md#the-shared-decoder); how many masks each keeps; and how they agree with the
stock generator's: the share with a partner of IoU ≥ 0.95 and the worst best-partner IoU,
both ways, and the worst IoU of the masks both kept for the same prompt.

Thresholds: with random weights, the defaults (0.88 / 0.95) keep no mask, and every mask's box
is the whole image, so box NMS at any threshold below 1 merges all candidates into one. The
benchmark therefore turns box NMS off, lets the predicted-IoU filter pass about half the
candidates, and sets the stability filter (offset scaled to random weights' small logits) so
that about 100 masks survive. vit_b's values below were calibrated that way; other models
are calibrated at start (`--calibrate`), outside the timings. Fewer than 10 masks on a side
fails the run (exit 1).

    python benchmarks/bench_segment.py [--device cpu|cuda|mps] [--model-type vit_h]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.utils.transforms import ResizeLongestSide

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emif_daemon.stages import sam_decoder
from emif_daemon.stages.segment import ModelSpec
from emif_daemon.stages.segment_model import Segmenter, naive_masks

# (pred_iou_thresh, stability_score_thresh, stability_score_offset, box_nms_thresh) for
# vit_b with torch.manual_seed(0) weights on synthetic_photo(2048).
VIT_B_THRESHOLDS = (0.02, 0.575, 0.05, 1.0)
BEFORE_BATCH = {"cpu": 8, "mps": 16, "cuda": 64}  # the stage's batches before the shared decoder
MIN_MASKS = 10
PARTNER_IOU = 0.95


def synthetic_photo(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((size, size, 3), (40, 70, 100), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(12):
        cx, cy, r = [*rng.integers(0, size, 2).tolist(), int(rng.integers(size // 16, size // 5))]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    return img


def best_partner_ious(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For each mask of `a` its best IoU with a mask of `b`, and the same for `b`."""
    if not a or not b:
        return np.zeros(len(a)), np.zeros(len(b))
    inter = torch.zeros(len(a), len(b), dtype=torch.float64)
    rows = a[0].shape[0]
    for y in range(0, rows, 128):  # in bands: two stacks of full masks would be gigabytes
        ba = torch.as_tensor(np.stack([m[y : y + 128].ravel() for m in a]), dtype=torch.float32)
        bb = torch.as_tensor(np.stack([m[y : y + 128].ravel() for m in b]), dtype=torch.float32)
        inter += (ba @ bb.T).double()
    area_a = torch.tensor([float(m.sum()) for m in a], dtype=torch.float64)
    area_b = torch.tensor([float(m.sum()) for m in b], dtype=torch.float64)
    iou = inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1)
    return iou.max(1).values.numpy(), iou.max(0).values.numpy()


def same_prompt_ious(ours: list[Any], stock: list[dict[str, Any]]) -> list[float]:
    """IoU of each of our masks with the stock mask of the same prompt (point, and nearest
    predicted IoU among its three), where the stock generator kept that mask too."""
    out = []
    for seg in ours:
        same = [
            r for r in stock
            if np.allclose(r["point_coords"][0], seg.point, atol=1)
            and abs(r["predicted_iou"] - seg.predicted_iou) < 1e-3
        ]  # fmt: skip
        if same:
            mate = min(same, key=lambda r: abs(r["predicted_iou"] - seg.predicted_iou))
            union = np.logical_or(seg.mask, mate["segmentation"]).sum()
            out.append(float(np.logical_and(seg.mask, mate["segmentation"]).sum() / union))
    return out


def calibrate(spec: ModelSpec, image: np.ndarray) -> tuple[float, float, float, float]:
    """Thresholds that let about half the candidates through the IoU filter and keep ~100."""
    offset = VIT_B_THRESHOLDS[2]
    loose = dataclasses.replace(
        spec, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
        stability_score_offset=offset,
    )  # fmt: skip
    segmenter = Segmenter(loose)
    working = ResizeLongestSide(1024).apply_image(image)
    with torch.inference_mode():
        data = segmenter.generator._generate_masks(working)
    iou, stability = data["iou_preds"], data["stability_score"]
    iou_thresh = float(np.median(iou))
    passing = np.sort(stability[iou > iou_thresh])
    return iou_thresh, float(passing[-100]), offset, 1.0


class SamsOwnDecoder(sam_decoder.SharedDecoder):
    """The stage as it was before the shared decoder: SAM's MaskDecoder on every batch, all
    masks made (the `Decoded` it returns carries them)."""

    def set_image(self, embedding: torch.Tensor) -> None:
        self.embedding = embedding

    def decode(self, sparse: torch.Tensor) -> sam_decoder.Decoded:
        prompt = self.model.prompt_encoder
        dense = prompt.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = dense.expand(len(sparse), -1, *self.grid)
        masks, iou = self.model.mask_decoder(
            self.embedding, prompt.get_dense_pe(), sparse, dense, multimask_output=True
        )
        return sam_decoder.Decoded(iou, masks, masks)

    def masks(self, decoded: sam_decoder.Decoded, rows: torch.Tensor) -> torch.Tensor:
        return decoded.tokens[rows]


def timed(run: Any, device: str) -> tuple[Any, float]:
    started = time.perf_counter()
    out = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument(
        "--points-per-batch", type=int, default=0, help="the stage's; 0 = by device (stock: 64)"
    )
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--calibrate", action="store_true", help="calibrate even for vit_b")
    parser.add_argument(
        "--thresholds", type=float, nargs=4, metavar=("IOU", "STABILITY", "OFFSET", "NMS"),
        help="pred_iou_thresh stability_score_thresh stability_score_offset box_nms_thresh",
    )  # fmt: skip
    args = parser.parse_args()

    torch.manual_seed(0)
    image = synthetic_photo(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / f"random_{args.model_type}.pth"
        torch.save(sam_model_registry[args.model_type]().state_dict(), ckpt)
        spec = ModelSpec(
            args.model_type, str(ckpt), args.device,
            points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        )  # fmt: skip
        thresholds = args.thresholds
        calibrated = not thresholds and (args.calibrate or args.model_type != "vit_b")
        if calibrated:
            thresholds = calibrate(spec, image)
        iou_t, stab_t, offset, nms = thresholds or VIT_B_THRESHOLDS
        spec = dataclasses.replace(
            spec, pred_iou_thresh=iou_t, stability_score_thresh=stab_t,
            stability_score_offset=offset, box_nms_thresh=nms,
        )  # fmt: skip
        shared = Segmenter(spec)
        own = Segmenter(spec)  # the stage before: SAM's decoder, its batch, whole batches
        own.generator.decoder = SamsOwnDecoder(own.model)
        own.generator.piece = 0
        own.batch = args.points_per_batch or BEFORE_BATCH.get(own.home, 64)
    device = shared.home

    made = [0]  # prompts whose masks the shared decoder made (the rest failed the IoU filter)
    masks_of = sam_decoder.SharedDecoder.masks

    def counting(self: Any, decoded: Any, rows: Any) -> Any:
        made[0] += len(rows)
        return masks_of(self, decoded, rows)

    sam_decoder.SharedDecoder.masks = counting  # type: ignore[method-assign]

    predictor = SamPredictor(shared.model)
    with torch.inference_mode():  # also the warm-up
        _, encoder_s = timed(lambda: predictor.set_image(image), device)
    stock, stock_s = timed(lambda: naive_masks(shared.model, image, spec), device)
    stage, stage_s = timed(lambda: own.segment(image), device)
    fast, fast_s = timed(lambda: shared.segment(image), device)

    stock_m = [r["segmentation"] for r in stock]
    table = []
    for name, segments, seconds in (
        ("segment stage before: SAM's mask decoder", stage, stage_s),
        ("segment stage: shared decoder", fast, fast_s),
    ):
        masks = [s.mask for s in segments]
        ours, theirs = best_partner_ious(masks, stock_m)
        agree = (np.sum(ours >= PARTNER_IOU) + np.sum(theirs >= PARTNER_IOU)) / max(
            1, len(ours) + len(theirs)
        )
        worst = min([*ours.tolist(), *theirs.tolist()], default=0.0)
        pairs = same_prompt_ious(segments, stock)
        same = f"{len(pairs)}, worst IoU {min(pairs, default=0.0):.4f}"
        table.append((name, seconds, len(masks), f"{agree:.1%}", f"{worst:.4f}", same))

    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else ""
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
        f"segment-anything {sam_decoder.installed_version()}"
    )
    print(f"device: {device} {gpu}".rstrip())
    print(
        f"model {args.model_type} (random weights), image {args.size}², "
        f"points {args.points_per_side}², batch: stage {shared.batch}, "
        f"with SAM's decoder {own.batch}, stock 64; "
        f"pred_iou {iou_t:.4g}, stability {stab_t:.4g} (offset {offset:g}), "
        f"box NMS {nms:g}{' (calibrated)' if calibrated else ''}"
    )
    grid = args.points_per_side**2
    print(f"prompts whose masks the shared decoder made: {made[0]} of {grid}")
    print()
    print(
        "| path | seconds | vs stock | masks | masks with an IoU ≥ 0.95 partner (both ways) "
        "| worst best-partner IoU | kept by both (same prompt) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    print(f"| stock SamAutomaticMaskGenerator on {args.size}² | {stock_s:.1f} | 1.00× | "
          f"{len(stock_m)} | | | |")  # fmt: skip
    for name, seconds, count, agree, worst, same in table:
        print(f"| {name} | {seconds:.1f} | {stock_s / seconds:.2f}× | {count} | {agree} | "
              f"{worst} | {same} |")  # fmt: skip
    print(f"| image encoder alone (in every path) | {encoder_s:.1f} | | | | | |")
    print()
    print(
        f"speed-up of the stage (shared decoder): {stock_s / fast_s:.2f}× "
        f"({(stock_s - encoder_s) / max(1e-9, fast_s - encoder_s):.2f}× outside the encoder)"
    )
    few = [name for name, _, count, *_ in table if count < MIN_MASKS]
    if len(stock_m) < MIN_MASKS:
        few.append("stock")
    if few:
        print(f"FAIL: fewer than {MIN_MASKS} masks kept by {', '.join(few)}: compare nothing")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
