"""One module per stage; `build` makes the stage a name stands for."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..daemon import Runtime
    from ..engine import Stage


def build(name: str, rt: Runtime) -> Stage:
    if name == "generate":
        from .generate import GenerateStage  # noqa: PLC0415

        return GenerateStage(rt)
    if name == "upscale":
        from .upscale import UpscaleStage  # noqa: PLC0415

        return UpscaleStage(rt)
    if name == "segment":
        from .segment import SegmentStage  # noqa: PLC0415

        return SegmentStage(rt)
    raise ValueError(f"unknown stage {name!r}; known: generate, upscale, segment")
