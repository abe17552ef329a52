"""Upscale: every PNG under GENERATIONS/ → a chain of passes → UPSCALED_IMAGES/.

A pass is img2img, or on AUTOMATIC1111 its upscaler-only extras route (`endpoint =
"extras"`). Each answer must still be its input's picture, over the whole image: a pass that
destroyed, flattened, blurred or replaced it fails the item, naming the pass and its scores
(docs/servers.md#checks-after-each-answer). Every img2img pass is seeded from the item, so
no two images of a data set get the same noise, unless the pass sets `seed` itself.
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
from emif_daemon.servers.dialects import recipe_file
from emif_daemon.servers.preflight.check import Preflight, pass_uses
from emif_daemon.servers.preflight.checklist import Use
from emif_daemon.servers.resemblance import Look, compare, look, pass_problem
from emif_daemon.servers.sdapi import EXTRAS, IMG2IMG, Answer, Server
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.layout import upscale_output
from emif_daemon.stages.image_files import PngTreeDiscovery, publish_png, read_source_png, sha256


def pass_payload(
    template: Mapping[str, Any], image: bytes, endpoint: str = "img2img", seed: int | None = None
) -> dict[str, Any]:
    """One pass's payload, the input image aside: for img2img width/height = the image's
    size and `seed` = the item's, unless the pass sets them (Draw Things rejects an init
    image whose size differs); the extras route sizes its answer from its own keys and
    takes no seed."""
    if endpoint == "extras":
        return dict(template)
    size = png_size(image)
    own: dict[str, Any] = {"width": size[0], "height": size[1]} if size else {}
    if seed is not None:
        own["seed"] = seed
    return {**own, **template}


def item_seed(source_sha256: str) -> int:
    """The seed of every img2img pass of an item: from its source's bytes, so it differs
    between images, stays the same when the item is done again, and needs no record to
    find (it is written to the sidecar too)."""
    return int(source_sha256[:8], 16)


HINTS = (
    "on AUTOMATIC1111 img2img at steps 1 or denoising_strength 0 starts from noise (upscale "
    'with endpoint = "extras"), a high strength redraws the picture, and an upscaler listed '
    "without its weights falls back to a plain resize; Draw Things given no usable init image "
    "works on the app's canvas"
)


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
        digest = sha256(source)
        seed = item_seed(digest)
        current, server_seconds = source, 0.0
        text: str | None = None  # `current` as base64 when a server sent it so
        before = self._source_look(source, digest, item.source)
        sent: list[dict[str, Any]] = []
        scores: list[dict[str, float]] = []
        for n, use in enumerate(self.passes, 1):
            payload = pass_payload(use.payload, current, use.endpoint, seed)
            path = EXTRAS if use.endpoint == "extras" else IMG2IMG
            answer = self.server.post(
                path,
                payload,
                priority=self.priority,
                expect=1,
                init_image=current,
                init_text=text,
                check=work.check,
            )
            server_seconds += answer.seconds
            self._check_answer(n, use, payload, answer)
            after = self._answer_look(n, answer.images[0])
            if before is not None and after is not None:
                scores.append(self._content(n, use, before, after))
            current, before = answer.images[0], after
            text = answer.texts[0] if answer.texts else None
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
            "source_sha256": digest,
            "seed": seed,
            "passes": sent,
            "endpoints": [u.endpoint for u in self.passes],
            "recipes": [recipe_file(u.payload) for u in self.passes],
            "content_check": scores,
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
        """Each answer gets a cheap header-and-end check here (the content check decodes it
        whole next, and the last is verified in full with its size before it is published);
        A1111's `info` must show the checkpoint and ControlNet asked for."""
        image = answer.images[0]
        problem = png_shape(image)
        if problem:
            raise TransientError(f"pass {n} answer: {problem}")
        kind = self.server.info.kind if self.server.info else None
        if kind == "a1111" and use.endpoint == "img2img":
            ran = a1111_info_problem(payload, answer.info, answer.info_error)
            ran = ran or a1111_maps_problem(payload, answer.extra_images)
            if ran:
                raise PermanentItemError(f"pass {n} ({use.where}): {ran}")

    @property
    def _checking(self) -> bool:
        return self.cfg.min_resemblance > 0 or self.cfg.min_detail_ratio > 0

    def _source_look(self, source: bytes, digest: str, path: Path) -> Look | None:
        """The source as the check sees it: from the generate stage of this process when it
        made the image, else decoded (a source that cannot be decoded fails the item)."""
        if not self._checking:
            return None
        seen = self.ctx.looks.get(digest)
        if seen is not None:
            return seen
        try:
            return look(source)
        except ValueError as exc:
            raise PermanentItemError(
                f"source {path}: {exc}; replace it, then run `emif retry --stage upscale`"
            ) from exc

    def _answer_look(self, n: int, image: bytes) -> Look | None:
        if not self._checking:
            return None
        try:
            return look(image)
        except ValueError as exc:
            raise TransientError(f"pass {n} answer: {exc}") from exc

    def _content(self, n: int, use: Use, before: Look, after: Look) -> dict[str, float]:
        """The pass's scores; fails the item at once when its answer is not its input's
        picture (another attempt would send the same request)."""
        scores = compare(before, after)
        problem = pass_problem(
            scores,
            min_resemblance=self.cfg.min_resemblance,
            min_detail_ratio=self.cfg.min_detail_ratio,
        )
        if problem:
            raise PermanentItemError(
                f"pass {n} ({use.where}) did not return its input's picture: {problem}; check "
                f"that pass: {HINTS}"
            )
        return scores.as_dict()
