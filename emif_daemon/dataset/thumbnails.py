"""Thumbnails for the gallery, made once per image version with Pillow and cached.

A thumbnail's name carries a key made from its source's size and mtime, so an unchanged image
is found by name in one listing of its folder and a replaced one gets a new thumbnail. Each is
written atomically (files.atomic_write): a page never shows half a thumbnail, and two rebuilds
never see each other's partial files.

An image's cut-outs share one *sheet*, a grid of the largest ones: one file per image instead
of one per cut-out keeps the cache small on a network share (SAM cuts dozens per image).
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from emif_daemon.dataset.catalog import Stat
from emif_daemon.share.atomic import atomic_write

THUMB_SIDE = 320  # pixels stored; shown at 240 CSS pixels, sharp on a Retina screen
SHEET_SHOWN = 240  # a cut-out sheet is as wide as an image's panel, in CSS pixels
PIXELS_PER_CSS = 2  # a sheet is stored at twice its size on the page
TILE_SHOWN = 60  # the smallest tile, in CSS pixels (a sheet of 5 to 16 cut-outs)
SHEET_MAX = 16  # the largest cut-outs; the page links to the folder for the rest
VERSION = "2"  # change it when thumbnails should look different: every one is made again
SUFFIX = ".webp"
QUALITY = 80
CHECK = (236, 236, 236)  # the checkerboard behind transparent cut-outs
PAPER = (255, 255, 255)


def thumb_name(stem: str, kind: str, stat: Stat) -> str:
    """``<stem>.<kind>.<key>.webp``: the key changes when the source is replaced."""
    text = f"{VERSION}:{kind}:{stat[0]}:{stat[1]}".encode()
    return f"{stem}.{kind}.{hashlib.sha1(text, usedforsecurity=False).hexdigest()[:12]}{SUFFIX}"


@dataclass(frozen=True)
class SheetLayout:
    """Where each cut-out's tile is in a sheet, in CSS pixels (for the page's image map): one
    cut-out fills the sheet, up to 4 share it 2 × 2, up to 16 share it 4 × 4."""

    count: int

    @property
    def columns(self) -> int:
        return 1 if self.count <= 1 else 2 if self.count <= 4 else 4

    @property
    def tile(self) -> int:
        return SHEET_SHOWN // self.columns

    @property
    def rows(self) -> int:
        return max(1, math.ceil(self.count / self.columns))

    @property
    def size(self) -> tuple[int, int]:
        return self.columns * self.tile, self.rows * self.tile

    def box(self, index: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of tile `index` as shown."""
        x, y = (index % self.columns) * self.tile, (index // self.columns) * self.tile
        return x, y, x + self.tile, y + self.tile


def sheet_layout(cutouts: int) -> SheetLayout:
    return SheetLayout(min(cutouts, SHEET_MAX))


@dataclass(frozen=True)
class Thumb:
    """A thumbnail's file name in its folder, or why there is none."""

    name: str | None
    problem: str | None = None


def _encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "WEBP", quality=QUALITY, method=4)
    return buf.getvalue()


def _has_alpha(img: Image.Image) -> bool:
    return "A" in img.getbands() or "transparency" in img.info


def image_thumbnail(source: Path) -> bytes:
    """A WebP at most THUMB_SIDE on its longer side, transparency kept."""
    with Image.open(source) as img:
        img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS, reducing_gap=2.0)
        return _encode(img.convert("RGBA" if _has_alpha(img) else "RGB"))


def _checkerboard(side: int) -> Image.Image:
    board = Image.new("RGB", (side, side), PAPER)
    square = 15 * PIXELS_PER_CSS // 2
    for y in range(0, side, square):
        for x in range((y // square) % 2 * square, side, 2 * square):
            board.paste(CHECK, (x, y, x + square, y + square))
    return board


def cutout_sheet(folder: Path, files: Sequence[str]) -> tuple[bytes, list[str]]:
    """A grid of the first SHEET_MAX cut-outs over a checkerboard; (WebP, unreadable files).

    A cut-out that cannot be read leaves its tile empty: the sheet is still whole.
    """
    layout = sheet_layout(len(files))
    tile = layout.tile * PIXELS_PER_CSS
    width, height = layout.size
    sheet = Image.new("RGB", (width * PIXELS_PER_CSS, height * PIXELS_PER_CSS), PAPER)
    board = _checkerboard(tile)
    unreadable = []
    for index, name in enumerate(files[: layout.count]):
        x, y = (index % layout.columns) * tile, (index // layout.columns) * tile
        sheet.paste(board, (x, y))
        try:
            with Image.open(folder / name) as cut:  # small objects are enlarged to be seen
                rgba = ImageOps.contain(cut.convert("RGBA"), (tile - 8, tile - 8))
        except Exception:  # Pillow raises many kinds for damaged files; the tile stays empty
            unreadable.append(name)
            continue
        offset = (x + (tile - rgba.width) // 2, y + (tile - rgba.height) // 2)
        sheet.paste(rgba, offset, rgba)
    return _encode(sheet), unreadable


class Thumbnailer:
    """Makes the missing thumbnails in one group's folder; counts what it made."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made = 0
        self.wanted: set[str] = set()
        self._existing: set[str] | None = None

    def _exists(self, name: str) -> bool:
        if self._existing is None:
            try:
                self._existing = {p.name for p in self.folder.iterdir() if p.is_file()}
            except OSError:
                self._existing = set()
        return name in self._existing

    def _write(self, name: str, data: bytes) -> None:
        atomic_write(self.folder / name, data)
        self.made += 1
        if self._existing is not None:
            self._existing.add(name)

    def image(self, stem: str, kind: str, source: Path, stat: Stat) -> Thumb:
        name = thumb_name(stem, kind, stat)
        self.wanted.add(name)
        if self._exists(name):
            return Thumb(name)
        try:
            data = image_thumbnail(source)
        except Exception as exc:  # a damaged image is shown as such, never stops the build
            return Thumb(None, f"cannot read {source.name}: {exc}")
        self._write(name, data)
        return Thumb(name)

    def sheet(self, stem: str, folder: Path, files: Sequence[str], stat: Stat) -> Thumb:
        name = thumb_name(stem, "cutouts", stat)
        self.wanted.add(name)
        if self._exists(name):
            return Thumb(name)
        data, unreadable = cutout_sheet(folder, files)
        self._write(name, data)
        problem = f"cannot read {', '.join(unreadable)}" if unreadable else None
        return Thumb(name, problem)

    def prune(self) -> int:
        """Remove thumbnails of images that are gone or were replaced; returns how many."""
        removed = 0
        try:
            stale = [
                p
                for p in self.folder.iterdir()
                if p.name.endswith(SUFFIX)
                and not p.name.startswith(".")
                and p.name not in self.wanted
                and p.is_file()
            ]
        except OSError:
            return 0
        for path in stale:
            path.unlink(missing_ok=True)
            removed += 1
        return removed
