"""Pictures for the loopback servers: cheap to make, and telling apart what was kept from
what was destroyed.

A generated picture is a grid of coloured cells drawn from a key (the seed). An img2img
answer redraws its input's grid at the new size, so it resembles the input as a real
low-strength pass does. A destroyed one looks the way a real sampler's ruined answers look,
at the size asked for: smooth colour blobs (one step from pure noise), one flat colour with a
light fall-off, a blur of the input, one colour, or fine noise (`destroyed`). PNGs are built
without Pillow where rows repeat (zlib at level 1 is fast) so the servers cost the tests
little CPU.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
import zlib
from collections import OrderedDict

from PIL import Image, ImageFilter, UnidentifiedImageError

GRID = 16  # cells per side of a generated picture
NOISE = 64  # cells per side of a noise picture
DESTROYED = ("blobs", "flat", "blurred", "onecolour", "noise")  # what `destroyed` can make


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")


def png_from_rows(width: int, height: int, rows: list[bytes], repeat: list[int]) -> bytes:
    """An RGB PNG whose rows are `rows[i]` repeated `repeat[i]` times (filter byte added)."""
    raw = b"".join((b"\x00" + row) * n for row, n in zip(rows, repeat, strict=True))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 1))
        + _chunk(b"IEND", b"")
    )


def make_png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG of one colour."""
    color = bytes(((seed >> s) & 0xFF) for s in (0, 8, 16))
    return png_from_rows(width, height, [color * width], [height])


def _cells(width: int, height: int, colours: list[list[bytes]]) -> bytes:
    """A picture of `colours` (rows × columns of RGB triples) stretched to width × height."""
    n_rows, n_cols = len(colours), len(colours[0])
    xs = [x * n_cols // width for x in range(width)]
    rows, repeat = [], []
    edges = [y * height // n_rows for y in range(n_rows + 1)]
    for r, line in enumerate(colours):
        rows.append(b"".join(line[c] for c in xs))
        repeat.append(edges[r + 1] - edges[r])
    return png_from_rows(width, height, rows, repeat)


def _palette(key: str, size: int) -> list[list[bytes]]:
    rnd = random.Random(hashlib.sha256(key.encode()).digest())
    return [[bytes(rnd.randrange(256) for _ in range(3)) for _ in range(size)] for _ in range(size)]


class Pictures:
    """Renders and remembers pictures: which content key each answered PNG shows."""

    def __init__(self) -> None:
        self.fixed: dict[tuple[int, int], bytes] = {}  # size → the answer (benchmarks)
        self._keys: dict[str, str] = {}  # sha256 of a PNG we made → its content key
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def render(self, key: str, width: int, height: int) -> bytes:
        """The picture `key` at this size (noise when the key starts with "noise:")."""
        if (width, height) in self.fixed:
            return self.fixed[(width, height)]
        with self._lock:
            cached = self._cache.get((key, width, height))
        if cached is not None:
            return cached
        grid = NOISE if key.startswith("noise:") else GRID
        data = _cells(width, height, _palette(key, grid))
        with self._lock:
            self._cache[(key, width, height)] = data
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
            self._keys[hashlib.sha256(data).hexdigest()] = key
        return data

    def key_of(self, data: bytes) -> str | None:
        with self._lock:
            return self._keys.get(hashlib.sha256(data).hexdigest())

    def resized(self, data: bytes, width: int, height: int) -> bytes:
        """`data`'s picture at a new size: redrawn when we made it, else resized by Pillow."""
        if (width, height) in self.fixed:
            return self.fixed[(width, height)]
        key = self.key_of(data)
        if key is not None:
            return self.render(key, width, height)
        with Image.open(io.BytesIO(data)) as img:
            out = img.convert("RGB").resize((width, height))
        buf = io.BytesIO()
        out.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, or of any image Pillow reads (as ImageIO would); None if
    it is not an image."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _mean_colour(data: bytes | None) -> tuple[int, int, int]:
    if data is None:
        return (120, 110, 100)
    with Image.open(io.BytesIO(data)) as img:
        r, g, b = img.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))  # type: ignore[misc]
    return int(r), int(g), int(b)


def smeared(init: bytes | None, width: int, height: int, seed: int) -> bytes:
    """Smooth colour blobs around the input's average colour: what one sampling step from
    pure noise (σ_max) decodes to. Nothing of the input's layout survives."""
    rnd = random.Random(seed)
    mean = _mean_colour(init)
    cells = bytes(
        max(0, min(255, mean[c] + rnd.randint(-60, 60))) for _ in range(25) for c in range(3)
    )
    low = Image.frombytes("RGB", (5, 5), cells)
    return _png(low.resize((width, height), Image.Resampling.BICUBIC))


def destroyed(kind: str, image: bytes, seed: int) -> bytes:
    """`image` ruined the way `kind` says, at its own size."""
    size = image_size(image)
    if size is None:
        raise ValueError("not an image")
    width, height = size
    if kind == "blobs":
        return smeared(image, width, height, seed)
    if kind == "noise":
        return _cells(width, height, _palette(f"noise:{seed}", NOISE))
    if kind == "blurred":  # a Gaussian blur of σ = 1/32 of the side: 64 px at 2048²
        with Image.open(io.BytesIO(image)) as img:
            return _png(img.convert("RGB").filter(ImageFilter.GaussianBlur(max(size) / 32)))
    r, g, b = _mean_colour(image)
    if kind == "onecolour":
        return png_from_rows(width, height, [bytes((r, g, b)) * width], [height])
    if kind == "flat":  # the average colour, a little darker towards the bottom
        rows = [
            bytes(max(0, v - 24 * y // height) for v in (r, g, b)) * width for y in range(height)
        ]
        return png_from_rows(width, height, rows, [1] * height)
    raise ValueError(f"unknown kind {kind!r}; one of {', '.join(DESTROYED)}")
