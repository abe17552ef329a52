"""PNG files as the stages meet them: size from the header, structure and CRCs checked,
never decoded and re-encoded (the bytes a server sends are the bytes written)."""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the IHDR chunk without decoding, or None if not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def png_shape(data: bytes) -> str | None:
    """Cheap check: a PNG header and an IEND chunk at the end (no CRCs, no decoding)."""
    if png_size(data) is None:
        return "not a PNG (bad signature or header)"
    if not data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"):
        return "PNG is truncated (no IEND chunk)"
    return None


def png_problem(data: bytes, expect: tuple[int, int] | None = None) -> str | None:
    """Why `data` is not a complete PNG of the expected size, or None.

    Checks structure and CRCs (Pillow's verify) without decoding pixels: the bytes are
    written as they are, never re-encoded.
    """
    from io import BytesIO  # noqa: PLC0415 - keep module import light

    from PIL import Image  # noqa: PLC0415

    shape = png_shape(data)
    if shape:
        return shape
    try:
        with Image.open(BytesIO(data)) as img:
            img.verify()
    except Exception as exc:
        return f"PNG does not verify: {exc}"
    size = png_size(data)
    if expect and size != tuple(expect):
        assert size is not None
        return f"PNG is {size[0]}×{size[1]}, expected {expect[0]}×{expect[1]}"
    return None
