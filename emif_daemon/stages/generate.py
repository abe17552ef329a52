"""Generate: items of accepted prompts files → txt2img PNGs under GENERATIONS/ (SPEC §3, §4)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ..engine import Discovery, Item, StageBase, Work
from ..errors import TransientError
from ..failures import FailureLog
from ..files import png_problem
from ..inbox import Expansion, Inbox, queued_files
from ..layout import is_input_png
from ..prompts import PlannedItem
from ..sdapi import TXT2IMG
from ..watch import TreeScanner
from .common import publish_png, server_for, utc_iso, without_images

if TYPE_CHECKING:
    from ..daemon import Runtime


def expected_size(payload: dict[str, Any]) -> tuple[int, int] | None:
    """The final image size a txt2img payload asks for, when it can be known.

    Draw Things' width/height are the final size (hi-res fix included); A1111's hires fix
    scales them by hr_scale or sets hr_resize_x/y.
    """
    w, h = payload.get("width"), payload.get("height")
    if not (isinstance(w, int) and isinstance(h, int)) or w % 64 or h % 64:
        return None
    if payload.get("enable_hr") is True:
        rx, ry = payload.get("hr_resize_x") or 0, payload.get("hr_resize_y") or 0
        if rx and ry:
            return int(rx), int(ry)
        scale = payload.get("hr_scale", 2.0)
        return (int(w * scale), int(h * scale)) if isinstance(scale, int | float) else None
    return w, h


def build_payload(base: dict[str, Any], item: PlannedItem) -> dict[str, Any]:
    """[generate.payload] ⊕ the job's overrides ⊕ the computed fields; the seed is always ours."""
    return {
        **base,
        **item.payload,
        "prompt": item.prompt,
        "negative_prompt": item.negative_prompt,
        "seed": item.seed,
    }


class GenerateStage(StageBase):
    name = "generate"
    priority = 1

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        cfg = rt.cfg.generate
        self.server = server_for(rt, rt.cfg.server.url)
        self.inbox = Inbox(
            rt.layout,
            Expansion(cfg.prompt_template, cfg.negative_prompt, cfg.payload),
            rt.on_event,
        )
        self.outputs = TreeScanner(rt.layout.generations, want=is_input_png)
        self.failures = FailureLog(rt.layout.failed, self.name)

    def wait_available(self, stop: threading.Event) -> None:
        self.server.wait_until_up(stop)

    def discover(self) -> Discovery:
        found = Discovery()
        queued = queued_files(self.rt.layout)
        if queued:
            now = self.rt.store.server_now()
            for path in queued:
                if self.rt.settler.ready(path, now):
                    self.inbox.take(path)
                else:
                    found.waiting += 1
        batches = self.inbox.batches()
        if not batches:
            return found
        done = self.outputs.scan()
        failed = self.failures.keys()
        gens = self.rt.layout.generations
        for batch in batches:
            todo = [i for i in batch.items if not all(n in done for n in i.output_names())]
            still = [i for i in todo if i.key not in failed]
            if not still:
                self.inbox.finish(
                    batch,
                    {
                        "items": len(batch.items),
                        "done": len(batch.items) - len(todo),
                        "failed": len(todo),
                        "failures": [
                            {"item": i.key, "reason": self.failures.read(i.key).get("reason")}
                            for i in todo
                        ],
                    },
                )
                continue
            for planned in still:
                outputs = tuple(gens / n for n in planned.output_names())
                found.items.append(Item(planned.key, outputs, data=planned, batch=batch.name))
        return found

    def run(self, item: Item, work: Work) -> dict[str, Any]:
        planned: PlannedItem = item.data
        payload = build_payload(self.rt.cfg.generate.payload, planned)
        started = time.time()
        answer = self.server.post(TXT2IMG, payload, priority=self.priority, expect=planned.images)
        expect = expected_size(payload)
        for k, image in enumerate(answer.images, 1):
            problem = png_problem(image, expect)
            if problem:
                raise TransientError(f"image {k} of the answer: {problem}")
        work.check()
        info = self.server.info
        sidecar = {
            "prompt": planned.prompt,
            "negative_prompt": planned.negative_prompt,
            "seed": planned.seed,
            "seed_reported": (answer.info or {}).get("seed"),
            "payload": without_images(payload),
            "server_url": self.server.url,
            "server_kind": info.kind if info else None,
            "server_model": info.model if info else None,
            "host": self.rt.host,
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
        rel = item.outputs[0].relative_to(self.rt.layout.root)
        return {
            "output": str(rel),
            "images": len(item.outputs),
            "seed": planned.seed,
            "server_seconds": round(answer.seconds, 3),
        }
