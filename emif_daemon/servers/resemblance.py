"""Is an answer the picture it should be? A whole-image check on small grey thumbnails.

A server can answer HTTP 200 with a valid PNG of the right size that is not the picture:
A1111's img2img at steps 1 (or strength 0) denoises pure noise into a smooth smear, a listed
upscaler without weights falls back to a blurry resize, Draw Things given no usable init
image works on the app's canvas, a sampler that failed returns black. Each image is decoded
once and reduced to what the check needs (docs/servers.md#checks-after-each-answer):

- a 128² grey image, box-averaged from the whole picture; its **detail** is the mean
  absolute difference between neighbouring pixels (grey levels). A blurred, flat or smooth
  answer loses it, a re-rendered one keeps it;
- its 32² box average, the **thumbnail**: the structural similarity (SSIM over the whole
  thumbnail) of an answer's thumbnail to its input's says whether the layout was kept.

An upscale pass passes when both the SSIM and the detail ratio (answer / input) reach their
thresholds; a txt2img answer passes when it is neither one colour nor without detail. Looking
at the whole picture matters: photos often have a flat wall or sky at the top, where any flat
replacement looks alike. The decode is the cost (zlib): about 30 ms of CPU for 1024², 85 ms
for 2048² on a 2020s x86 core; everything after it works on 128² and costs under a millisecond.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Pillow is imported when a picture is looked at
    from PIL.Image import Image as PILImage

SIDE = 128  # detail is measured on a SIDE² grey image of the whole picture
THUMB = 32  # the SSIM thumbnail: SIDE² reduced by SIDE / THUMB
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2  # SSIM's stabilisers for 8-bit values
# Added to both sides of the detail ratio: a ratio of two near-flat pictures says nothing,
# and a flat input (a user's blank PNG) cannot be flattened further.
DETAIL_FLOOR = 0.25
ONE_COLOUR = 2.0  # every channel's standard deviation at SIDE² below this: one colour
# Modes Pillow reduces directly; anything else (palette, 16-bit) is converted first.
REDUCIBLE = {"L", "RGB", "RGBA"}
MAX_PIXELS = 8192 * 8192  # larger than any answer asked for: not decoded (memory)


@dataclass(frozen=True)
class Look:
    """What the check keeps of one picture (a few kB, whatever its size)."""

    thumb: bytes  # THUMB² grey values, row by row
    detail: float  # mean |neighbour difference| of the SIDE² grey image, in grey levels
    spread: float  # the largest per-channel standard deviation at SIDE²: ~0 for one colour
    mean: tuple[int, int, int]  # the average colour, to name it
    size: tuple[int, int]  # the picture's own size


@dataclass(frozen=True)
class Scores:
    """How an answer compares with its input."""

    resemblance: float  # SSIM of the thumbnails: 1 the same layout, ~0 unrelated
    detail_ratio: float  # answer's detail / input's: ~1 kept, ≤ 0.25 blurred or flat

    def as_dict(self) -> dict[str, float]:
        return {
            "resemblance": round(self.resemblance, 3),
            "detail_ratio": round(self.detail_ratio, 3),
        }


def look(data: bytes) -> Look:
    """Decode a picture once and measure it; raises ValueError if it cannot be decoded."""
    from PIL import Image  # noqa: PLC0415 - keep module import light

    try:
        with Image.open(BytesIO(data)) as img:
            if img.size[0] * img.size[1] > MAX_PIXELS:
                raise ValueError(f"{img.size[0]}×{img.size[1]} pixels is too large to check")
            return look_image(img)
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # a broken image
        raise ValueError(f"cannot decode the image: {exc}") from exc


def look_image(img: PILImage) -> Look:
    """`look` for a picture already opened (tests measure pictures they drew)."""
    from PIL import Image, ImageChops, ImageStat  # noqa: PLC0415

    if img.mode not in REDUCIBLE:
        img = img.convert("RGB")
    factor = max(1, min(img.size) // SIDE)
    small = img.reduce(factor) if factor > 1 else img  # box average: cheap, decodes once
    rgb = small.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BOX)
    grey = rgb.convert("L")
    across = ImageChops.difference(grey.crop((1, 0, SIDE, SIDE)), grey.crop((0, 0, SIDE - 1, SIDE)))
    down = ImageChops.difference(grey.crop((0, 1, SIDE, SIDE)), grey.crop((0, 0, SIDE, SIDE - 1)))
    detail = (ImageStat.Stat(across).mean[0] + ImageStat.Stat(down).mean[0]) / 2
    stat = ImageStat.Stat(rgb)
    thumb = grey.reduce(SIDE // THUMB).tobytes()
    r, g, b = (round(v) for v in stat.mean)
    return Look(thumb, detail, max(stat.stddev), (r, g, b), img.size)


def similarity(a: bytes, b: bytes) -> float:
    """Structural similarity (SSIM over the whole thumbnail): 1 for the same picture,
    near 0 for unrelated ones; flat areas of equal brightness count as alike."""
    n = len(a)
    if n == 0 or n != len(b):
        return 0.0
    mx, my = sum(a) / n, sum(b) / n
    vx = sum((x - mx) ** 2 for x in a) / n
    vy = sum((y - my) ** 2 for y in b) / n
    cov = sum((x - mx) * (y - my) for x, y in zip(a, b, strict=True)) / n
    return ((2 * mx * my + C1) * (2 * cov + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))


def compare(before: Look, after: Look) -> Scores:
    """An answer's scores against its input."""
    ratio = (after.detail + DETAIL_FLOOR) / (before.detail + DETAIL_FLOOR)
    return Scores(similarity(before.thumb, after.thumb), ratio)


def pass_problem(scores: Scores, *, min_resemblance: float, min_detail_ratio: float) -> str | None:
    """Why an upscale pass's answer is not its input's picture, or None. A threshold of 0
    turns its measure off."""
    low = []
    if min_resemblance > 0 and scores.resemblance < min_resemblance:
        low.append(
            f"its layout resembles the input {scores.resemblance:.2f} (SSIM of 32×32 grey "
            f"thumbnails), below upscale.min_resemblance {min_resemblance:g}"
        )
    if min_detail_ratio > 0 and scores.detail_ratio < min_detail_ratio:
        low.append(
            f"it keeps {scores.detail_ratio:.2f} of the input's detail (neighbour differences "
            f"at 128²), below upscale.min_detail_ratio {min_detail_ratio:g}"
        )
    return "; ".join(low) or None


def blank_problem(seen: Look, *, min_detail: float) -> str | None:
    """Why a txt2img answer is no picture (one colour, or flat), or None. `min_detail` 0
    turns the check off."""
    if min_detail <= 0:
        return None
    if seen.spread < ONE_COLOUR:
        r, g, b = seen.mean
        return f"it is one colour (RGB {r}, {g}, {b}) all over"
    if seen.detail < min_detail:
        return (
            f"it is flat: its detail is {seen.detail:.2f} grey levels (neighbour differences at "
            f"128²), below generate.min_detail {min_detail:g}"
        )
    return None


class LookCache:
    """The looks of the last images this process checked, by the sha256 of their bytes: an
    image generated here is the upscale stage's source moments later, and decoding it again
    would double the check's cost for that image. Thread-safe; bounded."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._looks: OrderedDict[str, Look] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> Look | None:
        with self._lock:
            return self._looks.get(digest)

    def put(self, digest: str, seen: Look) -> None:
        with self._lock:
            self._looks[digest] = seen
            self._looks.move_to_end(digest)
            while len(self._looks) > self._size:
                self._looks.popitem(last=False)
