"""Does a pass's answer still look like its input? A cheap check on small grey thumbnails.

An upscale pass that destroyed the picture (A1111's img2img at strength 0 denoises pure noise;
a request that fell back to the app's canvas) still answers a valid PNG of the right size.
Comparing the input and the answer on a 32×8 grey thumbnail catches that at a small CPU cost
(docs/servers.md#checks-after-each-answer).

Only the top eighth of each image is decoded: PNG rows are compressed and filtered one after
the other, so a band at the top costs an eighth of a full decode, and a picture that was
destroyed is destroyed there too.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

from emif_daemon.png import png_size

THUMB = (32, 8)  # width, height of the compared thumbnails
BAND = 8  # decode the top 1/BAND of the rows: the same share of input and answer
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2  # SSIM's stabilisers for 8-bit values


@dataclass(frozen=True)
class Thumb:
    """Grey values of one image's top band, reduced to THUMB."""

    values: tuple[int, ...]


def band_png(data: bytes) -> bytes:
    """The same PNG announcing only its top rows in the header, so a decoder stops there.

    An interlaced PNG, or one that is not a PNG, is returned unchanged (decoded whole).
    """
    size = png_size(data)
    if size is None or len(data) < 33 or data[28] != 0:  # byte 28: interlace method
        return data
    width, height = size
    rows = max(1, round(height / BAND))
    ihdr = data[12:16] + struct.pack(">II", width, rows) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def thumbnail(data: bytes) -> Thumb:
    """The thumbnail of a PNG's top band; raises ValueError if it cannot be decoded."""
    from PIL import Image  # noqa: PLC0415 - keep module import light

    try:
        with Image.open(BytesIO(band_png(data))) as img:
            grey = img.convert("L").resize(THUMB, Image.Resampling.BOX)
            return Thumb(tuple(grey.tobytes()))
    except (OSError, SyntaxError) as exc:  # Pillow's errors for a broken PNG
        raise ValueError(f"cannot decode the image: {exc}") from exc


def similarity(a: Thumb, b: Thumb) -> float:
    """Structural similarity (SSIM over the whole thumbnail): 1 for the same picture,
    near 0 for unrelated ones; flat areas of equal brightness count as alike."""
    n = len(a.values)
    if n == 0 or n != len(b.values):
        return 0.0
    mx, my = sum(a.values) / n, sum(b.values) / n
    vx = sum((x - mx) ** 2 for x in a.values) / n
    vy = sum((y - my) ** 2 for y in b.values) / n
    cov = sum((x - mx) * (y - my) for x, y in zip(a.values, b.values, strict=True)) / n
    return ((2 * mx * my + C1) * (2 * cov + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))
