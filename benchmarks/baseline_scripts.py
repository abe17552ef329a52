"""The team's original way, rebuilt for comparison: two hand-started
sequential scripts. Generate: one request, decode the base64 into a Pillow image, save it
(re-encoding the PNG), re-open it to log its size, next. Upscale, afterwards: for each
file, open it, re-encode it for every pass, decode each answer, save, re-open, log.

    python benchmarks/baseline_scripts.py URL ROOT IMAGES
"""

from __future__ import annotations

import base64
import io
import sys
import time
from pathlib import Path

import requests
from PIL import Image

PASSES = [
    {"upscaler": "4x_ultrasharp_f16.ckpt", "upscaler_scale": 2, "strength": 0.0},
    {"strength": 0.3, "model": "juggernaut_xl_v9_q6p_q8p.ckpt"},
]


def to_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def from_b64(text: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(text)))
    img.load()
    return img


def generate(url: str, out: Path, images: int) -> list[Path]:
    paths = []
    for i in range(1, images + 1):
        payload = {"prompt": "p", "seed": 1000 + i, "width": 1024, "height": 1024}
        answer = requests.post(f"{url}/sdapi/v1/txt2img", json=payload, timeout=900).json()
        img = from_b64(answer["images"][0])
        path = out / f"Bench_family_{i}_1.png"
        img.save(path)
        with Image.open(path) as check:
            print(f"{time.strftime('%H:%M:%S')} saved {path.name} {check.size}", flush=True)
        paths.append(path)
    return paths


def upscale(url: str, sources: list[Path], out: Path) -> None:
    for source in sources:
        img = Image.open(source)
        img.load()
        for p in PASSES:
            payload = {**p, "width": img.width, "height": img.height, "init_images": [to_b64(img)]}
            answer = requests.post(f"{url}/sdapi/v1/img2img", json=payload, timeout=900).json()
            img = from_b64(answer["images"][0])
        path = out / f"{source.stem}_upscaled_1.png"
        img.save(path)
        with Image.open(path) as check:
            print(f"{time.strftime('%H:%M:%S')} upscaled {path.name} {check.size}", flush=True)


def main() -> int:
    url, root, images = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    (root / "gen").mkdir(parents=True, exist_ok=True)
    (root / "up").mkdir(parents=True, exist_ok=True)
    upscale(url, generate(url, root / "gen", images), root / "up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
