"""A data set on disk as the stages leave it, made without a server or a model: generations
and upscales with their sidecars, cut-out folders with manifests, failure records. For the
gallery and export tests and the gallery benchmark."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from emif_daemon.share.layout import Layout


def png(size: int, seed: int, *, alpha: bool = False) -> bytes:
    """A small picture that differs per seed: a coloured ground and two shapes."""
    ground = ((seed * 53) % 200 + 30, (seed * 97) % 200 + 30, (seed * 31) % 200 + 30)
    img = Image.new("RGBA" if alpha else "RGB", (size, size), (0, 0, 0, 0) if alpha else ground)
    draw = ImageDraw.Draw(img)
    q = size // 8
    draw.rectangle((q, q, 4 * q, 5 * q), fill=(240, 60, 40))
    draw.ellipse((4 * q, 3 * q, 7 * q, 6 * q), fill=(40, 90, 230))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def add_image(
    root: Path,
    nation: str,
    category: str,
    index: int,
    *,
    size: int = 64,
    cutouts: int = 3,
    upscale: bool = True,
    segment: bool = True,
) -> dict[str, Any]:
    """One generation (and its upscale and cut-outs); returns its sidecar."""
    layout = Layout(root)
    stem = f"{nation}_{category}_{index}_1"
    gen = png(size, index)
    prompt = f"a photo of {nation} {category} number {index}"
    sidecar = {
        "prompt": prompt,
        "negative_prompt": "blurry",
        "seed": 1000 + index,
        "payload": {"model": "sd_xl_base_1.0_f16.ckpt", "steps": 30, "width": size},
        "recipe": "recipes/drawthings-sdxl-txt2img.json",
        "server_url": "http://127.0.0.1:7860",
        "host": "mac-a",
        "source": "nations.json",
        "started_at": "2026-11-20T10:00:00Z",
        "finished_at": "2026-11-20T10:00:41Z",
        "seconds": 41.2,
        "server_seconds": 40.9,
        "output_sha256": sha(gen),
    }
    folder = layout.generations / nation / category
    _write(folder / f"{stem}.png", gen)
    _write(folder / f"{stem}.json", json.dumps(sidecar).encode())
    if not upscale:
        return sidecar
    up = png(size * 2, index)
    up_stem = f"{stem}_upscaled_1"
    up_meta = {
        "source": f"GENERATIONS/{nation}/{category}/{stem}.png",
        "source_sha256": sha(gen),
        "passes": [{"upscaler": "4x_ultrasharp_f16.ckpt", "upscaler_scale": 2}],
        "recipes": ["recipes/drawthings-upscale-ultrasharp.json"],
        "host": "mac-b",
        "started_at": "2026-11-20T10:01:00Z",
        "finished_at": "2026-11-20T10:02:35Z",
        "seconds": 95.0,
        "output_sha256": sha(up),
    }
    folder = layout.upscaled / nation / category
    _write(folder / f"{up_stem}.png", up)
    _write(folder / f"{up_stem}.json", json.dumps(up_meta).encode())
    if segment:
        add_cutouts(root, nation, category, up_stem, up, cutouts)
    return sidecar


def add_cutouts(root: Path, nation: str, category: str, up_stem: str, up: bytes, n: int) -> None:
    folder = Layout(root).segments / nation / category / up_stem
    records = []
    for k in range(1, n + 1):
        name = f"{up_stem}_seg_{k:03}.png"
        _write(folder / name, png(24 + 8 * k, k, alpha=True))
        records.append(
            {
                "file": name,
                "bbox": [k, k, 20, 20],
                "crop_box": [0, 0, 24, 24],
                "area": 400 - k,
                "predicted_iou": 0.95,
                "stability_score": 0.97,
            }
        )
    manifest = {
        "source": f"UPSCALED_IMAGES/{nation}/{category}/{up_stem}.png",
        "source_sha256": sha(up),
        "model_type": "vit_h",
        "host": "mac-a",
        "finished_at": "2026-11-20T10:03:00Z",
        "seconds": 12.5,
        "segments": records,
    }
    _write(folder / "manifest.json", json.dumps(manifest).encode())


def add_failure(root: Path, stage: str, key: str, reason: str, attempts: int = 3) -> None:
    record = {
        "reason": reason,
        "attempts": attempts,
        "host": "mac-a",
        "failed_at": "2026-11-20T11:00:00Z",
    }
    _write(Layout(root).failed / stage / f"{key}.json", json.dumps(record).encode())


def make_dataset(
    root: Path, groups: list[tuple[str, str]], per_group: int, **options: Any
) -> list[dict[str, Any]]:
    """`per_group` images in each (nation, category); returns every generation's sidecar."""
    return [
        add_image(root, nation, category, index, **options)
        for nation, category in groups
        for index in range(1, per_group + 1)
    ]
