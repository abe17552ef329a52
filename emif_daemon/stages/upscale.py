"""Upscale: every PNG under GENERATIONS/ → a chain of img2img passes → UPSCALED_IMAGES/."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ..engine import Discovery, Item, StageBase, Work
from ..errors import TransientError
from ..files import png_problem, png_shape, png_size
from ..layout import upscale_output
from ..sdapi import IMG2IMG
from .common import (
    PngTreeDiscovery,
    publish_png,
    read_source_png,
    server_for,
    sha256,
    utc_iso,
)

if TYPE_CHECKING:
    from ..daemon import Runtime


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

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cfg = rt.cfg.upscale
        self.server = server_for(rt, rt.cfg.upscale_url)
        self.finder = PngTreeDiscovery(
            rt,
            inputs=rt.layout.generations,
            outputs=rt.layout.upscaled,
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

    def run(self, item: Item, work: Work) -> dict[str, Any]:
        assert item.source is not None
        source = read_source_png(item.source, self.name)
        started = time.time()
        current, sent, server_seconds = source, [], 0.0
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
        expect = tuple(self.cfg.expect_size) if self.cfg.expect_size else None
        problem = png_problem(current, expect)  # type: ignore[arg-type]
        if problem:
            raise TransientError(f"final image: {problem}")
        info = self.server.info
        sidecar = {
            "source": str(item.source.relative_to(self.rt.layout.root)),
            "source_sha256": sha256(source),
            "passes": sent,
            "server_url": self.server.url,
            "server_kind": info.kind if info else None,
            "host": self.rt.host,
            "started_at": utc_iso(started),
            "finished_at": utc_iso(),
            "seconds": round(time.time() - started, 3),
            "server_seconds": round(server_seconds, 3),
        }
        output = item.outputs[0]
        work.commit(lambda: publish_png(output, current, sidecar), output=str(output))
        return {
            "output": str(output.relative_to(self.rt.layout.root)),
            "server_seconds": round(server_seconds, 3),
        }
