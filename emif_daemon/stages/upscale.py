"""Upscale: every PNG under GENERATIONS/ → a chain of img2img passes → UPSCALED_IMAGES/."""

from __future__ import annotations

import threading
import time
from typing import Any

from ..config import UpscaleConfig
from ..errors import TransientError
from ..files import png_problem, png_shape, png_size
from ..layout import upscale_output
from ..sdapi import IMG2IMG, Server
from ..stage import Discovery, Item, StageBase, StageContext, StageResult, Work
from .common import PngTreeDiscovery, publish_png, read_source_png, sha256, utc_iso


def pass_payload(template: dict[str, Any], image: bytes) -> dict[str, Any]:
    """One pass's payload, the init image aside: width/height = the image's size unless
    the pass sets them (Draw Things rejects an init image whose size differs)."""
    size = png_size(image)
    base: dict[str, Any] = {"width": size[0], "height": size[1]} if size else {}
    return {**base, **template}


class UpscaleStage(StageBase):
    name = "upscale"
    priority = 2  # downstream of generate: served first by a shared server
    # Two workers: while one checks and writes an answer, the other's request keeps the
    # server busy (each item is two round-trips; the server limit still holds).
    workers = 2

    def __init__(self, ctx: StageContext, cfg: UpscaleConfig, server: Server) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.server = server
        self.finder = PngTreeDiscovery(
            ctx,
            inputs=ctx.layout.stage_input(self.name),
            outputs=ctx.layout.stage_output(self.name),
            output_of=upscale_output,
        )

    def unavailable(self) -> str | None:
        if not self.cfg.passes:
            return (
                "upscale.passes is empty: add [[upscale.passes]] tables to the config "
                "or set upscale.enabled = false"
            )
        return None

    def wait_available(self, stop: threading.Event) -> None:
        self.server.wait_until_up(stop)

    def discover(self) -> Discovery:
        return self.finder.discover()

    def run(self, item: Item, work: Work) -> StageResult:
        assert item.source is not None
        source = read_source_png(item.source, self.name)
        started = time.time()
        current, server_seconds = source, 0.0
        sent: list[dict[str, Any]] = []
        passes = self.cfg.passes
        for n, template in enumerate(passes, 1):
            payload = pass_payload(template, current)
            answer = self.server.post(
                IMG2IMG, payload, priority=self.priority, expect=1, init_image=current
            )
            server_seconds += answer.seconds
            # An intermediate image is only checked for a PNG header and an end (the next
            # pass's server decodes it anyway); the last one is verified in full below.
            problem = (
                png_problem(answer.images[0]) if n == len(passes) else png_shape(answer.images[0])
            )
            if problem:
                raise TransientError(f"pass {n} answer: {problem}")
            current = answer.images[0]
            sent.append(payload)
            work.check()
        size = self.cfg.expect_size
        expect = (size[0], size[1]) if size else None  # config: [] or [width, height]
        problem = png_problem(current, expect)
        if problem:
            raise TransientError(f"final image: {problem}")
        info = self.server.info
        sidecar = {
            "source": str(item.source.relative_to(self.ctx.layout.root)),
            "source_sha256": sha256(source),
            "passes": sent,
            "server_url": self.server.url,
            "server_kind": info.kind if info else None,
            "host": self.ctx.host,
            "started_at": utc_iso(started),
            "finished_at": utc_iso(),
            "seconds": round(time.time() - started, 3),
            "server_seconds": round(server_seconds, 3),
        }
        output = item.outputs[0]
        work.commit(lambda: publish_png(output, current, sidecar), output=str(output))
        return StageResult(
            output=str(output.relative_to(self.ctx.layout.root)),
            server_seconds=round(server_seconds, 3),
        )
