"""Segment stage vs SamAutomaticMaskGenerator run naively on the 2048² image.

Same model (vit_b architecture, random weights: Meta's cannot be downloaded here), same
settings, same image. Prints seconds for each path, the ratio, and how well the masks
agree (share of masks with a partner of IoU ≥ 0.95 on the other side).

    python benchmarks/bench_segment.py [--model-type vit_b] [--points-per-side 32]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emif_daemon.stages.segment import ModelSpec
from emif_daemon.stages.segment_model import AUTO_BATCH, Segmenter, naive_masks


def synthetic_photo(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((size, size, 3), (40, 70, 100), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(12):
        cx, cy, r = [*rng.integers(0, size, 2).tolist(), int(rng.integers(size // 16, size // 5))]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    return img


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    if not a:
        return 1.0
    ok = 0
    for m in a:
        ok += any(np.logical_and(m, n).sum() / max(1, np.logical_or(m, n).sum()) >= 0.95 for n in b)
    return ok / len(a)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument(
        "--points-per-batch", type=int, default=0, help="the stage's; 0 = by device (naive: 64)"
    )
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / f"random_{args.model_type}.pth"
        torch.save(sam_model_registry[args.model_type]().state_dict(), ckpt)
        spec = ModelSpec(
            args.model_type,
            str(ckpt),
            "auto",
            points_per_side=args.points_per_side,
            points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
        )
        segmenter = Segmenter(spec)
    image = synthetic_photo(args.size)

    predictor = SamPredictor(segmenter.model)
    t = time.perf_counter()
    with torch.inference_mode():
        predictor.set_image(image)
    encoder_s = time.perf_counter() - t

    t = time.perf_counter()
    naive = naive_masks(segmenter.model, image, spec)
    naive_s = time.perf_counter() - t
    if args.points_per_batch == 0:  # also the stage at the stock batch size, for reference
        segmenter.generator.points_per_batch = 64
        t = time.perf_counter()
        segmenter.segment(image)
        stock_batch_s = time.perf_counter() - t
        segmenter.generator.points_per_batch = AUTO_BATCH.get(segmenter.device, 64)
    t = time.perf_counter()
    fast = segmenter.segment(image)
    fast_s = time.perf_counter() - t

    naive_m = [r["segmentation"] for r in naive]
    fast_m = [s.mask for s in fast]
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"device {segmenter.device}"
    )
    print(
        f"model {args.model_type} (random weights), image {args.size}², "
        f"points {args.points_per_side}², stage batch {segmenter.generator.points_per_batch} "
        f"(naive {args.points_per_batch or 64}), "
        f"pred_iou {args.pred_iou_thresh}, stability {args.stability_score_thresh}"
    )
    print()
    print("| path | seconds | masks | masks with an IoU≥0.95 partner |")
    print("|---|---:|---:|---:|")
    print(f"| naive generator on {args.size}² | {naive_s:.1f} | {len(naive_m)} | "
          f"{agreement(naive_m, fast_m):.0%} |")  # fmt: skip
    print(f"| segment stage (1024 path) | {fast_s:.1f} | {len(fast_m)} | "
          f"{agreement(fast_m, naive_m):.0%} |")  # fmt: skip
    if args.points_per_batch == 0:
        print(f"| segment stage at batch 64 | {stock_batch_s:.1f} | | |")
    print(f"| image encoder alone (shared by both) | {encoder_s:.1f} | | |")
    print()
    print(f"speed-up: {naive_s / fast_s:.2f}× (target ≥ 3×)")
    shared = encoder_s
    print(
        f"time outside the encoder: naive {naive_s - shared:.1f} s, "
        f"stage {fast_s - shared:.1f} s ({(naive_s - shared) / max(1e-9, fast_s - shared):.2f}×)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
