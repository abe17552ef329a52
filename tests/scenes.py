"""Synthetic "photographs" for the content check: structured scenes, not noise, and the
answers a server may give for them, destroyed or legitimate
(docs/servers.md#checks-after-each-answer).

A scene is drawn from a layout seed (where the walls, windows, people, trees and stalls are)
and a texture seed (fabric, foliage, wood grain, sensor grain), so the same scene can be
redrawn with other fine detail, as an img2img pass at low strength does. Two kinds have a
flat top eighth (a room under its ceiling, a studio portrait), two a busy one (a street under
trees, a market under awnings): photos of people often have a wall or sky at the top, where
any flat replacement looks alike.

    python -m tests.scenes      # the score table of every answer against its source
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from emif_daemon.servers.resemblance import Look, Scores, compare, look_image, pass_problem

KINDS = ("room", "portrait", "street", "market")
FLAT_TOP = ("room", "portrait")
SOURCE, ANSWER = 1024, 2048  # the shipped recipes: txt2img 1024², upscaled to 2048²


def _field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random values in [-1, 1] varying over `cells` cells per side (value noise)."""
    low = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32), mode="F")
    return np.asarray(low.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _texture(rng: np.random.Generator, size: int, octaves: tuple[int, ...]) -> np.ndarray:
    """Octaves of value noise: detail at every scale from size / octave."""
    total = np.zeros((size, size), np.float32)
    for i, cells in enumerate(octaves):
        total += _field(rng, size, min(cells, size)) / (1.4**i)
    return total


class Canvas:
    """An RGB float picture drawn with textured shapes."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.rgb = np.zeros((size, size, 3), np.float32)

    def fill(
        self,
        mask: np.ndarray,
        colour: tuple[float, ...],
        texture: float,
        octaves: tuple[int, ...] = (8, 32, 128),
    ) -> None:
        """Paint `colour` where `mask` is set, modulated by a texture of `texture` levels."""
        tex = _texture(self.rng, self.size, octaves) * texture
        for c in range(3):
            self.rgb[..., c] = np.where(mask, colour[c] + tex, self.rgb[..., c])

    def shape(self, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
        img = Image.new("L", (self.size, self.size), 0)
        draw(ImageDraw.Draw(img))
        return np.asarray(img) > 127

    def box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        s = self.size
        return self.shape(lambda d: d.rectangle((x0 * s, y0 * s, x1 * s, y1 * s), fill=255))

    def oval(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        s = self.size
        return self.shape(lambda d: d.ellipse((x0 * s, y0 * s, x1 * s, y1 * s), fill=255))

    def person(self, x: float, y: float, h: float, palette: np.random.Generator) -> None:
        """Head, hair, eyes and a clothed body, `h` tall with the feet at (x, y)."""
        w = h * 0.28
        shirt = tuple(float(v) for v in palette.uniform(30, 220, 3))
        self.fill(self.box(x - w / 2, y - h * 0.78, x + w / 2, y), shirt, 14, (16, 64, 256))
        self.fill(self.oval(x - w * 0.62, y - h * 0.8, x + w * 0.62, y - h * 0.62), shirt, 10)
        skin = (200.0, 160.0, 130.0) if palette.random() < 0.5 else (120.0, 85.0, 60.0)
        head = h * 0.2
        self.fill(self.oval(x - head * 0.4, y - h, x + head * 0.4, y - h + head), skin, 6)
        hair = (40.0, 30.0, 25.0)
        self.fill(
            self.oval(x - head * 0.42, y - h - head * 0.05, x + head * 0.42, y - h + head * 0.3),
            hair,
            18,
            (32, 128, 512),
        )
        for side in (-1, 1):
            ex = x + side * head * 0.15
            self.fill(
                self.oval(
                    ex - head * 0.05, y - h + head * 0.4, ex + head * 0.05, y - h + head * 0.48
                ),
                (30.0, 30.0, 30.0),
                0,
            )

    def finish(self, grain: float) -> Image.Image:
        noise = self.rng.normal(0, grain, self.rgb.shape).astype(np.float32)
        return Image.fromarray(np.clip(self.rgb + noise, 0, 255).astype(np.uint8), "RGB")


def _room(c: Canvas, layout: np.random.Generator) -> None:
    wall = tuple(float(v) for v in layout.uniform(150, 215, 3))
    c.fill(np.ones((c.size, c.size), bool), wall, 2.5, (2, 4))  # a painted wall: flat
    c.fill(c.box(0, 0, 1, 0.1), tuple(v + 20 for v in wall), 1.0, (2,))  # ceiling
    c.fill(c.box(0, 0.1, 1, 0.115), (235.0, 235.0, 230.0), 1.0, (4,))  # cornice
    wx = layout.uniform(0.05, 0.55)
    c.fill(c.box(wx, 0.22, wx + 0.3, 0.55), (90.0, 70.0, 50.0), 4)  # window frame
    c.fill(c.box(wx + 0.02, 0.24, wx + 0.28, 0.53), (110.0, 150.0, 90.0), 30, (16, 64, 256))
    c.fill(c.box(0.7, 0.25, 0.9, 0.42), (60.0, 40.0, 30.0), 5)  # a picture on the wall
    c.fill(c.box(0.72, 0.27, 0.88, 0.4), (170.0, 120.0, 80.0), 35, (8, 32, 128))
    c.fill(c.box(0, 0.72, 1, 1), (120.0, 85.0, 55.0), 18, (4, 64, 512))  # wooden floor
    for i in range(int(layout.integers(2, 5))):
        c.person(0.15 + 0.22 * i + layout.uniform(-0.04, 0.04), 0.92, 0.55, layout)
    c.fill(c.box(0.1, 0.68, 0.9, 0.74), (100.0, 60.0, 35.0), 12, (2, 256))  # table top


def _portrait(c: Canvas, layout: np.random.Generator) -> None:
    backdrop = tuple(float(v) for v in layout.uniform(60, 140, 3))
    c.fill(np.ones((c.size, c.size), bool), backdrop, 6.0, (2, 3))  # mottled studio backdrop
    side = layout.choice([0.0, 0.72])
    c.fill(c.oval(side, 0.45, side + 0.28, 1.1), (50.0, 95.0, 45.0), 40, (16, 64, 256))  # plant
    c.fill(c.box(side + 0.1, 0.75, side + 0.18, 1), (140.0, 80.0, 50.0), 10)  # its pot
    x = 0.5 + layout.uniform(-0.08, 0.08)
    c.person(x, 1.25, 1.05, layout)
    for i in range(7):  # a striped scarf and buttons
        y = 0.72 + i * 0.035
        c.fill(c.box(x - 0.1, y, x + 0.1, y + 0.015), (230.0, 220.0, 190.0), 6, (64,))
    for i in range(4):
        y = 0.8 + i * 0.05
        c.fill(c.oval(x - 0.008, y, x + 0.008, y + 0.016), (20.0, 20.0, 20.0), 0)
    c.fill(c.oval(x - 0.03, 0.42, x + 0.03, 0.445), (150.0, 60.0, 60.0), 4)  # mouth
    c.fill(c.box(x - 0.006, 0.33, x + 0.006, 0.4), (170.0, 125.0, 100.0), 3)  # nose


def _street(c: Canvas, layout: np.random.Generator) -> None:
    c.fill(np.ones((c.size, c.size), bool), (150.0, 180.0, 215.0), 4, (4,))  # sky
    c.fill(c.box(0, 0.35, 1, 0.78), (150.0, 140.0, 125.0), 14, (8, 64, 256))  # facades
    for col in range(9):
        for row in range(4):
            x, y = 0.03 + col * 0.11, 0.38 + row * 0.09
            c.fill(c.box(x, y, x + 0.06, y + 0.055), (40.0, 50.0, 65.0), 8)
    canopy = c.oval(-0.2, -0.25, 0.6, 0.42) | c.oval(0.4, -0.3, 1.2, 0.38)
    c.fill(canopy, (60.0, 105.0, 45.0), 45, (32, 128, 512))  # foliage along the top
    c.fill(c.box(0, 0.78, 1, 1), (95.0, 95.0, 100.0), 16, (16, 256))  # pavement
    for _ in range(int(layout.integers(3, 6))):
        c.person(layout.uniform(0.08, 0.92), layout.uniform(0.9, 0.99), 0.38, layout)


def _market(c: Canvas, layout: np.random.Generator) -> None:
    c.fill(np.ones((c.size, c.size), bool), (120.0, 110.0, 95.0), 10, (8, 64))

    def awning(d: ImageDraw.ImageDraw) -> None:
        for x in range(0, c.size, c.size // 20):
            d.rectangle((x, 0, x + c.size // 40, c.size * 0.18), fill=255)

    stripes = c.shape(awning)
    c.fill(c.box(0, 0, 1, 0.18), (200.0, 40.0, 40.0), 8)
    c.fill(stripes, (235.0, 230.0, 220.0), 8)  # awnings along the top
    c.fill(c.box(0, 0.45, 1, 0.7), (110.0, 80.0, 50.0), 12, (4, 128))  # stalls
    for _ in range(260):  # fruit
        x, y, r = layout.uniform(0, 1), layout.uniform(0.2, 0.62), layout.uniform(0.01, 0.025)
        colour = tuple(float(v) for v in layout.uniform(40, 240, 3))
        c.fill(c.oval(x - r, y - r, x + r, y + r), colour, 10, (64,))
    for i in range(int(layout.integers(3, 6))):
        c.person(0.1 + 0.18 * i, layout.uniform(0.93, 1.0), 0.4, layout)


DRAW = {"room": _room, "portrait": _portrait, "street": _street, "market": _market}


def scene(kind: str, size: int = SOURCE, seed: int = 1, texture: int | None = None) -> Image.Image:
    """One scene: its layout from `seed`, its fine detail and grain from `texture`."""
    canvas = Canvas(size, np.random.default_rng([seed, 0 if texture is None else texture + 1]))
    DRAW[kind](canvas, np.random.default_rng(seed))
    return canvas.finish(grain=3.0)


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


def _image(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "RGB")


def _mean(img: Image.Image) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in _array(img).reshape(-1, 3).mean(axis=0))
    return r, g, b


def up(img: Image.Image) -> Image.Image:
    """A plain 2× resize: an upscaler, or what A1111 answers for one without weights."""
    return img.resize((ANSWER, ANSWER), Image.Resampling.LANCZOS)


# -- what a pass may answer instead of its input's picture, each at the right size --------


def flat(src: Image.Image, kind: str, seed: int) -> Image.Image:
    """The input's average colour with a gentle light fall-off: a sampler that gave up."""
    ramp = np.linspace(-12, 12, ANSWER, dtype=np.float32)[:, None, None]
    return _image(np.full((ANSWER, ANSWER, 3), _mean(src), np.float32) + ramp)


def one_colour(src: Image.Image, kind: str, seed: int) -> Image.Image:
    return Image.new("RGB", (ANSWER, ANSWER), _mean(src))


def blurred(sigma: float) -> Callable[[Image.Image, str, int], Image.Image]:
    def make(src: Image.Image, kind: str, seed: int) -> Image.Image:
        return up(src).filter(ImageFilter.GaussianBlur(sigma))

    make.__name__ = f"blurred σ{sigma:g}"
    return make


def blobs(src: Image.Image, kind: str, seed: int) -> Image.Image:
    """Smooth colour blobs in the input's colours: one sampling step from pure noise."""
    rng = np.random.default_rng(seed + 77)
    low = np.asarray(src.resize((6, 6), Image.Resampling.BOX), np.float32)
    smooth = _image(low + rng.normal(0, 40, low.shape))
    return smooth.resize((ANSWER, ANSWER), Image.Resampling.BICUBIC)


OTHER = {"room": "portrait", "portrait": "room", "street": "market", "market": "street"}


def unrelated(src: Image.Image, kind: str, seed: int) -> Image.Image:
    """Another picture with the same kind of top (flat or busy): the app's canvas, a job
    mixed up."""
    return up(scene(OTHER[kind], SOURCE, seed + 1000))


def fine_noise(src: Image.Image, kind: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed + 5)
    return Image.fromarray(rng.integers(0, 256, (ANSWER, ANSWER, 3), dtype=np.uint8), "RGB")


# -- what a legitimate pass answers -----------------------------------------------------------


def resized(src: Image.Image, kind: str, seed: int) -> Image.Image:
    return up(src)


def retouched(src: Image.Image, kind: str, seed: int) -> Image.Image:
    """2×, warped by up to 1.5 px, sharpened, 6 % brighter, with new grain: what a
    low-strength img2img pass does to a picture it keeps."""
    rng = np.random.default_rng(seed + 9)
    big = up(src)
    step = ANSWER // 16
    mesh = []
    for y in range(0, ANSWER, step):
        for x in range(0, ANSWER, step):
            dx, dy = rng.uniform(-1.5, 1.5, 2)
            box = (x, y, x + step, y + step)
            quad = (
                x + dx,
                y + dy,
                x + dx,
                y + step + dy,
                x + step + dx,
                y + step + dy,
                x + step + dx,
                y + dy,
            )
            mesh.append((box, quad))
    warped = big.transform(big.size, Image.Transform.MESH, mesh, Image.Resampling.BILINEAR)
    sharp = warped.filter(ImageFilter.UnsharpMask(radius=2, percent=80, threshold=2))
    bright = ImageEnhance.Brightness(sharp).enhance(1.06)
    return _image(_array(bright) + rng.normal(0, 6, (ANSWER, ANSWER, 3)))


def redrawn(src: Image.Image, kind: str, seed: int) -> Image.Image:
    """The picture above 32 px kept, everything finer drawn anew (other fabric, foliage,
    grain): a tile-ControlNet pass at low strength."""
    other = up(scene(kind, SOURCE, seed, texture=seed + 500))

    def low(img: Image.Image) -> np.ndarray:
        return _array(img.filter(ImageFilter.GaussianBlur(8)))

    return _image(low(up(src)) + _array(other) - low(other))


DESTROYED = (flat, one_colour, blurred(64), blurred(128), blobs, unrelated, fine_noise)
LEGITIMATE = (resized, retouched, redrawn)


@dataclass(frozen=True)
class Row:
    kind: str
    answer: str
    legitimate: bool
    scores: Scores
    verdict: str | None  # the check's reason, None: passed

    @property
    def right(self) -> bool:
        return (self.verdict is None) == self.legitimate


def top_detail(img: Image.Image) -> float:
    """The detail of the top eighth alone (as the old band check saw it)."""
    w, h = img.size
    return look_image(img.crop((0, 0, w, h // 8))).detail


def rows(kinds: tuple[str, ...] = KINDS, seed: int = 1) -> list[Row]:
    """Every answer for every scene, scored as the daemon scores it (default thresholds)."""
    out = []
    for kind in kinds:
        src = scene(kind, SOURCE, seed)
        before: Look = look_image(src)
        for make, legit in [(m, False) for m in DESTROYED] + [(m, True) for m in LEGITIMATE]:
            scores = compare(before, look_image(make(src, kind, seed)))
            verdict = pass_problem(scores, min_resemblance=0.5, min_detail_ratio=0.5)
            out.append(Row(kind, make.__name__.replace("_", " "), legit, scores, verdict))
    return out


def table(found: list[Row]) -> str:
    lines = [
        "| scene (top) | answer | SSIM 32² | detail ratio | check |",
        "|---|---|---:|---:|---|",
    ]
    for r in found:
        top = "flat top" if r.kind in FLAT_TOP else "busy top"
        verdict = "passes" if r.verdict is None else "fails"
        mark = "" if r.right else " **(wrong)**"
        lines.append(
            f"| {r.kind} ({top}) | {r.answer} | {r.scores.resemblance:.2f} | "
            f"{r.scores.detail_ratio:.2f} | {verdict}{mark} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(rows()))
    sys.exit(0)
