"""Upscale: every PNG under GENERATIONS/ → a chain of passes → UPSCALED_IMAGES/.

A pass is img2img, or on AUTOMATIC1111 its upscaler-only extras route (`endpoint =
"extras"`). Each answer must still resemble its input: a pass that destroyed the picture
fails the item, naming the pass (docs/servers.md#checks-after-each-answer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emif_daemon.config.schema import UpscaleConfig
from emif_daemon.engine.stage import Discovery, Item, StageBase, StageContext, StageResult, Work
from emif_daemon.errors import PermanentItemError, TransientError
from emif_daemon.png import png_problem, png_shape, png_size
from emif_daemon.servers.answer_checks import a1111_info_problem, a1111_maps_problem
from emif_daemon.servers.preflight.check import Preflight, pass_uses
from emif_daemon.servers.preflight.checklist import Use
from emif_daemon.servers.resemblance import Thumb, similarity, thumbnail
from emif_daemon.servers.sdapi import EXTRAS, IMG2IMG, Answer, Server
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.layout import upscale_output
from emif_daemon.stages.image_files import PngTreeDiscovery, publish_png, read_source_png, sha256


def pass_payload(
    template: Mapping[str, Any], image: bytes, endpoint: str = "img2img"
) -> dict[str, Any]:
    """One pass's payload, the input image aside: for img2img width/height = the image's
    size unless the pass sets them (Draw Things rejects an init image whose size differs);
    the extras route sizes its answer from its own keys."""
    size = png_size(image)
    if endpoint == "extras" or size is None:
        return dict(template)
    return {"width": size[0], "height": size[1], **template}


class UpscaleStage(StageBase):
    name = "upscale"
    priority = 2  # downstream of generate: served first by a shared server
    # Two workers: while one checks and writes an answer, the other's request keeps the
    # server busy (each item is two round-trips; the server limit still holds).
    workers = 2

    def __init__(
        self,
        ctx: StageContext,
        cfg: UpscaleConfig,
        server: Server,
        models_folders: Sequence[str | Path] = (),
    ) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.server = server
        self.passes = pass_uses(cfg.passes)
        self.preflight = Preflight(self.name, server, self.passes, models_folders)
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
        return self.preflight.refusal  # the server cannot do what the passes say

    def wait_available(self, stop: threading.Event) -> None:
        self.server.wait_until_up(stop)

    def discover(self) -> Discovery:
        return self.finder.discover()

    def run(self, item: Item, work: Work) -> StageResult:
        assert item.source is not None
        self.preflight.ensure(work.check)
        source = read_source_png(item.source, self.name)
        started = time.time()
        current, server_seconds = source, 0.0
        thumb = self._thumb(source, "source", PermanentItemError)
        sent: list[dict[str, Any]] = []
        alike: list[float] = []
        for n, use in enumerate(self.passes, 1):
            payload = pass_payload(use.payload, current, use.endpoint)
            path = EXTRAS if use.endpoint == "extras" else IMG2IMG
            answer = self.server.post(
                path,
                payload,
                priority=self.priority,
                expect=1,
                init_image=current,
                check=work.check,
            )
            server_seconds += answer.seconds
            self._check_answer(n, use, payload, answer)
            after = self._thumb(answer.images[0], f"pass {n} answer", TransientError)
            if thumb is not None and after is not None:
                alike.append(self._resembles(n, use, thumb, after))
            current, thumb = answer.images[0], after
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
            "endpoints": [u.endpoint for u in self.passes],
            "resemblance": alike,
            "server_url": self.server.url,
            "server_kind": info.kind if info else None,
            "host": self.ctx.host,
            "started_at": utc_stamp(started),
            "finished_at": utc_stamp(),
            "seconds": round(time.time() - started, 3),
            "server_seconds": round(server_seconds, 3),
        }
        output = item.outputs[0]
        work.commit(lambda: publish_png(output, current, sidecar), output=str(output))
        return StageResult(
            output=str(output.relative_to(self.ctx.layout.root)),
            server_seconds=round(server_seconds, 3),
        )

    def _check_answer(self, n: int, use: Use, payload: dict[str, Any], answer: Answer) -> None:
        """An intermediate image gets only a cheap header-and-end check (the next pass's
        server decodes it anyway; the last is verified in full); A1111's `info` must show
        the checkpoint and ControlNet asked for."""
        image = answer.images[0]
        problem = png_problem(image) if n == len(self.passes) else png_shape(image)
        if problem:
            raise TransientError(f"pass {n} answer: {problem}")
        kind = self.server.info.kind if self.server.info else None
        if kind == "a1111" and use.endpoint == "img2img":
            ran = a1111_info_problem(payload, answer.info)
            ran = ran or a1111_maps_problem(payload, answer.extra_images)
            if ran:
                raise PermanentItemError(f"pass {n} ({use.where}): {ran}")

    def _thumb(self, image: bytes, what: str, error: type[Exception]) -> Thumb | None:
        if self.cfg.min_resemblance <= 0:
            return None
        try:
            return thumbnail(image)
        except ValueError as exc:
            raise error(f"{what}: {exc}") from exc

    def _resembles(self, n: int, use: Use, before: Thumb, after: Thumb) -> float:
        score = similarity(before, after)
        if score < self.cfg.min_resemblance:
            raise PermanentItemError(
                f"pass {n} ({use.where}) destroyed the picture: its answer resembles its input "
                f"{score:.2f}, below upscale.min_resemblance {self.cfg.min_resemblance:g}; check "
                "that pass: on AUTOMATIC1111 img2img at denoising_strength 0 starts from noise "
                '(use endpoint = "extras"), a high strength redraws the picture, and Draw Things '
                "given no usable init image works on the app's canvas"
            )
        return round(score, 3)
