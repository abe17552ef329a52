"""Generate: items of accepted prompts files → txt2img PNGs under GENERATIONS/.

The intake of prompts files (intake/inbox.py) runs as this stage's `maintain` step, before
each round; `discover` only reads (docs/architecture.md#the-data-path).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from emif_daemon.config.schema import GenerateConfig
from emif_daemon.engine.stage import Discovery, Item, StageBase, StageContext, StageResult, Work
from emif_daemon.errors import PermanentItemError, TransientError
from emif_daemon.intake.inbox import Inbox
from emif_daemon.intake.open_items import Batch
from emif_daemon.intake.planning import Expansion
from emif_daemon.intake.plans import PlannedItem, build_payload
from emif_daemon.png import png_problem
from emif_daemon.servers.answer_checks import a1111_info_problem, a1111_maps_problem
from emif_daemon.servers.dialects import guess_kind, recipe_file
from emif_daemon.servers.drawthings_files import upscale_factor
from emif_daemon.servers.preflight.check import Preflight
from emif_daemon.servers.preflight.checklist import Use
from emif_daemon.servers.resemblance import blank_problem, look
from emif_daemon.servers.sdapi import TXT2IMG, Server
from emif_daemon.share.clock import utc_stamp
from emif_daemon.stages.image_files import publish_png, sha256, without_images


def expected_size(payload: dict[str, Any], kind: str | None = None) -> tuple[int, int] | None:
    """The final image size a txt2img payload asks for, when it can be known
    (docs/servers.md#expected-size).

    Draw Things: width×height floored to 64 (`hires_fix`, alias `enable_hr`, keeps it: its
    own keys are the first pass), times the upscaler's factor whenever `upscaler` is set,
    txt2img included. A1111: hi-res fix makes it hr_resize_x/y, or width/height × hr_scale.
    """
    kind = kind if kind in ("drawthings", "a1111") else guess_kind(payload)
    w, h = payload.get("width"), payload.get("height")
    if not (isinstance(w, int) and isinstance(h, int)) or w <= 0 or h <= 0:
        return None
    if kind == "drawthings":
        factor = upscale_factor(payload)
        return (w // 64 * 64 * factor, h // 64 * 64 * factor) if factor else None
    if payload.get("enable_hr") is not True:
        return (w, h) if kind == "a1111" or not payload.get("upscaler") else None
    if kind is None:
        return None  # enable_hr means opposite things to the two servers
    rx, ry = payload.get("hr_resize_x") or 0, payload.get("hr_resize_y") or 0
    if isinstance(rx, int) and isinstance(ry, int) and (rx or ry):
        return (rx or ry * w // h, ry or rx * h // w)  # one side alone keeps the aspect
    scale = payload.get("hr_scale", 2.0)
    return (int(w * scale), int(h * scale)) if isinstance(scale, int | float) else None


class GenerateStage(StageBase):
    name = "generate"
    priority = 1
    # Two workers: while one checks and publishes an answer, the other's request is already
    # waiting for the server's slot, so the server never idles on our writes (the
    # per-server request limit still holds).
    workers = 2

    def __init__(
        self,
        ctx: StageContext,
        cfg: GenerateConfig,
        server: Server,
        models_folders: Sequence[str | Path] = (),
    ) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.server = server
        use = Use("generate", cfg.payload, "txt2img")
        self.preflight = Preflight(self.name, server, [use], models_folders)
        self.inbox = Inbox.on_share(
            ctx.layout,
            Expansion.of(cfg),
            ctx.events,
            clock=ctx.clock,
            identity=ctx.identity,
            settler=ctx.settler,
            relist_s=ctx.relist_s,
        )

    def unavailable(self) -> str | None:
        return self.preflight.refusal  # the server cannot do what the recipe says

    def wait_available(self, stop: threading.Event) -> None:
        self.server.wait_until_up(stop)

    def maintain(self) -> None:
        """The intake of prompts files, before each round (intake/inbox.py)."""
        self.inbox.step()

    def discover(self) -> Discovery:
        found = Discovery(waiting=self.inbox.waiting())
        batches = self.inbox.batches()
        found.items = self._items(batches)
        found.count = self.inbox.open.count(batches)
        return found

    def _items(self, batches: list[Batch]) -> Iterator[Item]:
        gens = self.ctx.layout.generations
        for batch in batches:
            for planned in self.inbox.open.of(batch):
                outputs = tuple(gens / n for n in planned.output_names())
                yield Item(planned.key, outputs, data=planned, batch=batch.name)

    def run(self, item: Item, work: Work) -> StageResult:
        self.preflight.ensure(work.check)
        planned: PlannedItem = item.data
        payload = build_payload(self.cfg.payload, planned)
        started = time.time()
        answer = self.server.post(
            TXT2IMG, payload, priority=self.priority, expect=planned.images, check=work.check
        )
        kind = self.server.info.kind if self.server.info else None
        expect = expected_size(payload, kind)
        for k, image in enumerate(answer.images, 1):
            problem = png_problem(image, expect)
            if problem:
                raise TransientError(f"image {k} of the answer: {problem}")
            self._check_content(k, image)
        if kind == "a1111":
            ran = a1111_info_problem(payload, answer.info, answer.info_error)
            ran = ran or a1111_maps_problem(payload, answer.extra_images)
            if ran:
                raise PermanentItemError(f"txt2img ({self.preflight.uses[0].where}): {ran}")
        work.check()
        info = self.server.info
        sidecar = {
            "prompt": planned.prompt,
            "negative_prompt": planned.negative_prompt,
            "seed": planned.seed,
            "seed_reported": (answer.info or {}).get("seed"),
            "payload": without_images(payload),
            "recipe": recipe_file(self.cfg.payload),
            "server_url": self.server.url,
            "server_kind": info.kind if info else None,
            "server_model": info.model if info else None,
            "host": self.ctx.host,
            "source": item.batch,
            "source_entry": planned.loc,
            "started_at": utc_stamp(started),
            "finished_at": utc_stamp(),
            "seconds": round(time.time() - started, 3),
            "server_seconds": round(answer.seconds, 3),
        }

        def publish() -> None:
            for output, image in zip(item.outputs, answer.images, strict=True):
                publish_png(output, image, sidecar)

        work.commit(publish, output=str(item.outputs[0]))
        rel = item.outputs[0].relative_to(self.ctx.layout.root)
        return StageResult(
            output=str(rel),
            server_seconds=round(answer.seconds, 3),
            details={"images": len(item.outputs), "seed": planned.seed},
        )

    def _check_content(self, k: int, image: bytes) -> None:
        """An answer that is one colour or has no detail is no picture: a sampler that
        failed (NaN gives black), a safety filter, a VAE that does not fit the model. It
        fails the item at once; what this process saw is kept for its upscale stage."""
        if self.cfg.min_detail <= 0:
            return
        try:
            seen = look(image)
        except ValueError as exc:
            raise TransientError(f"image {k} of the answer: {exc}") from exc
        problem = blank_problem(seen, min_detail=self.cfg.min_detail)
        if problem:
            raise PermanentItemError(
                f"image {k} of the txt2img answer ({self.preflight.uses[0].where}) is no "
                f"picture: {problem}; check the recipe's model, VAE and steps and the server's "
                "log (a sampler that fails gives black), then `emif retry --stage generate`"
            )
        self.ctx.looks.put(sha256(image), seen)
