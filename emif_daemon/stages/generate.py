"""Generate: items of accepted prompts files → txt2img PNGs under GENERATIONS/.

Intake (accepting, rejecting and finishing prompts files) is this stage's `maintain` step;
`discover` only reads (docs/architecture.md#the-data-path).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..allocation import intake_lock
from ..answers import a1111_info_problem, a1111_maps_problem
from ..batches import FixResult, failed_items, fix_batch
from ..config import GenerateConfig
from ..dialects import guess_kind, merge_payload, recipe_file
from ..errors import PermanentItemError, TransientError
from ..failures import FailureLog
from ..files import NotARegularFile, png_problem, read_regular
from ..findings import Use
from ..inbox import (
    Batch,
    BatchSummary,
    Expansion,
    Inbox,
    queued_files,
    stray_files,
    undo_stranded_moves,
)
from ..layout import is_input_png
from ..logs import get_logger
from ..plan import PlannedItem
from ..preflight import Preflight
from ..prompts import Limits
from ..resemblance import blank_problem, look
from ..sdapi import TXT2IMG, Server
from ..stage import Discovery, Item, StageBase, StageContext, StageResult, Work
from ..watch import TreeScanner
from ..zoo import upscale_factor
from .common import publish_png, sha256, utc_iso, without_images


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


def build_payload(base: dict[str, Any], item: PlannedItem) -> dict[str, Any]:
    """[generate.payload] ⊕ the job's overrides ⊕ the computed fields; the seed is always ours.

    An override spelled as an alias of the recipe's key (`cfg_scale` over `guidance_scale`)
    replaces it, so one key is sent (docs/servers.md#payloads).
    """
    return {
        **merge_payload(base, item.payload),
        "prompt": item.prompt,
        "negative_prompt": item.negative_prompt,
        "seed": item.seed,
    }


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
        self.inbox = Inbox(
            ctx.layout,
            Expansion(
                cfg.prompt_template,
                cfg.negative_prompt,
                cfg.payload,
                Limits(max_items=cfg.max_items_per_file),
            ),
            ctx.events,
            lock=lambda: intake_lock(ctx.layout, ctx.clock, ctx.identity),
            now=ctx.clock.now,
        )
        # Per batch, how many items from the start are known finished (images there, or
        # failed): each round resumes there instead of walking the whole plan.
        self._cursor: dict[str, int] = {}
        self._failed_seen: set[str] = set()
        self._strays: set[str] = set()
        self.outputs = TreeScanner(ctx.layout.generations, want=is_input_png, relist_s=ctx.relist_s)
        self.failures = FailureLog(ctx.layout.failed, self.name)
        self.log = get_logger()

    def unavailable(self) -> str | None:
        return self.preflight.refusal  # the server cannot do what the recipe says

    def wait_available(self, stop: threading.Event) -> None:
        self.server.wait_until_up(stop)

    def maintain(self) -> None:
        """Intake: accept or reject settled queue files, finish batches with nothing left."""
        queued = queued_files(self.ctx.layout)
        if queued:
            now = self.ctx.clock.now()
            for path in queued:
                if self.ctx.settler.ready(path, now):
                    self._take(path)
        self.inbox.plan_waiting()
        layout = self.ctx.layout
        for path in undo_stranded_moves((layout.queue, layout.accepted), self.ctx.clock.now()):
            self.log.warning("prompts_move_undone", file=str(path))
        self._say_strays()
        for batch in self.inbox.batches():
            if next(self._open_items(batch), None) is None:
                self._finish(batch)

    def _say_strays(self) -> None:
        """Each file in queue/ that is not a prompts file, said once."""
        for name in stray_files(self.ctx.layout):
            if name not in self._strays:
                self._strays.add(name)
                self.log.warning(
                    "queue_file_ignored",
                    file=name,
                    hint="only *.json files are prompts files; rename it if it is one",
                )

    def _take(self, path: Path) -> None:
        try:
            if not self._fix(path):
                self.inbox.take(path)
        except OSError as exc:  # the next round tries again; other files go on
            self.log.error("prompts_intake_failed", file=path.name, error=str(exc))

    def _fix(self, path: Path) -> bool:
        """A file named like a finished batch with failed items is its correction: its
        failed items are made again with the new plan (batches.py). True if it was one."""
        layout = self.ctx.layout
        if not (layout.done / path.name).is_file() or not failed_items(layout, path.name):
            return False
        try:
            data = read_regular(path, self.inbox.exp.limits.max_bytes)
        except NotARegularFile:
            return False  # refused with its reason by the normal intake
        if data == (layout.done / path.name).read_bytes():
            return False  # the same file again: said so by the normal intake
        with intake_lock(layout, self.ctx.clock, self.ctx.identity) as held:
            if not held:
                return True  # next round
            result = fix_batch(layout, self.inbox.exp, path.name, data)
        if isinstance(result, FixResult):
            path.unlink(missing_ok=True)
            self.log.info("batch_fixed", file=path.name, pending_again=result.pending_again)
            return True
        # Named like the batch, so meant to fix it: refused with the reasons, not taken as
        # a new batch of other images.
        self.inbox.reject(path, path.name, result)
        return True

    def _finish(self, batch: Batch) -> None:
        done = self.outputs.scan()
        todo = [i for i in batch.plan.items() if not all(n in done for n in i.output_names())]
        summary = BatchSummary(
            items=len(batch.plan),
            done=len(batch.plan) - len(todo),
            failed=len(todo),
            failures=[{"item": i.key, "reason": self._reason(i.key)} for i in todo],
        )
        try:
            self.inbox.finish(batch, summary)
        except OSError as exc:
            self.log.error("batch_finish_failed", file=batch.name, error=str(exc))

    def _reason(self, key: str) -> str | None:
        record = self.failures.read(key)
        return record.reason if record else None

    def _open_items(self, batch: Batch) -> Iterator[PlannedItem]:
        """Items of `batch` still to make (not all images there, not failed), lazily, from
        the first one not known finished."""
        done = self.outputs.scan()
        failed = self.failures.keys()
        if not failed >= self._failed_seen:  # `emif retry` made failed items pending again
            self._cursor.clear()
        self._failed_seen = failed
        start = self._cursor.get(batch.name, 0)
        for n, item in enumerate(batch.plan.items(start), start):
            finished = item.key in failed or all(x in done for x in item.output_names())
            if finished and n == start:
                start = n + 1
                self._cursor[batch.name] = start
            if not finished:
                yield item

    def discover(self) -> Discovery:
        found = Discovery()
        queued = queued_files(self.ctx.layout)
        if queued:
            now = self.ctx.clock.now()
            found.waiting = sum(1 for p in queued if not self.ctx.settler.ready(p, now))
        found.waiting += self.inbox.unplanned()
        batches = self.inbox.batches()
        found.items = self._items(batches)
        found.count = sum(len(b.plan) - self._cursor.get(b.name, 0) for b in batches)
        return found

    def _items(self, batches: list[Batch]) -> Iterator[Item]:
        gens = self.ctx.layout.generations
        for batch in batches:
            for planned in self._open_items(batch):
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
            "started_at": utc_iso(started),
            "finished_at": utc_iso(),
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
