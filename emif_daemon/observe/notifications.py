"""Notifications: a webhook POST (and optionally a macOS banner) for the events a person
waits for — a prompts file finished, an item failed, a stage became unavailable.

Deliveries run on their own thread from a queue, with bounded retries and backoff, so a
receiver that is down never slows a stage; events are delivered in order once it is back.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

import requests

from emif_daemon.logs import get_logger
from emif_daemon.retry import compute_backoff
from emif_daemon.share.clock import utc_stamp

EVENTS = ("batch_done", "batch_complete", "item_failed", "stage_unavailable")


def banner_text(event: str, data: Mapping[str, Any]) -> str:
    if event == "batch_done":
        return f"{data.get('file')}: {data.get('done')} done, {data.get('failed')} failed"
    if event == "item_failed":
        return f"{data.get('stage')} {data.get('item')} failed: {data.get('reason')}"
    return f"{data.get('stage')} unavailable: {data.get('reason')}"


class Notifier:
    def __init__(
        self,
        *,
        webhook_url: str,
        host: str,
        root: str,
        banner: bool = False,
        max_retries: int = 8,
        backoff_s: float = 1.0,
        cap_s: float = 60.0,
        platform: str = sys.platform,
    ) -> None:
        self.webhook_url = webhook_url
        self.host = host
        self.root = root
        self.banner = banner and platform == "darwin" and shutil.which("osascript") is not None
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.cap_s = cap_s
        self.log = get_logger()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._deliver, name="notify", daemon=True)
        self._thread.start()

    def __call__(self, event: str, data: Mapping[str, Any]) -> None:
        """Queue an event; returns at once."""
        if event not in EVENTS:
            return
        doc = {
            "event": event,
            "host": self.host,
            "root": self.root,
            "at": utc_stamp(),
            **data,
        }
        self._queue.put(doc)

    def close(self, flush_s: float = 2.0) -> None:
        """Give queued events a moment to go out, then stop (we are shutting down)."""
        self._queue.put(None)
        self._thread.join(flush_s)
        self._stop.set()
        self._thread.join(1)
        left = self._queue.qsize()
        if left:
            self.log.warning("notify_dropped", events=left, reason="shutting down")

    def _deliver(self) -> None:
        while True:
            doc = self._queue.get()
            if doc is None:
                return
            if self.banner:
                self._banner(doc)
            if self.webhook_url:
                self._post(doc)

    def _post(self, doc: dict[str, Any]) -> None:
        for attempt in range(1, self.max_retries + 2):
            try:
                response = requests.post(self.webhook_url, json=doc, timeout=(3, 10))
                if response.status_code < 500:
                    if response.status_code >= 400:
                        self.log.warning(
                            "notify_rejected", status=response.status_code, notify=doc["event"]
                        )
                    return
                why = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                why = str(exc)
            if attempt > self.max_retries:
                break
            delay = compute_backoff(attempt, base=self.backoff_s, cap=self.cap_s)
            self.log.info("notify_retry", notify=doc["event"], attempt=attempt, error=why)
            if self._stop.wait(delay):
                return
        self.log.warning("notify_dropped", notify=doc["event"], reason=why)

    def _banner(self, doc: dict[str, Any]) -> None:
        text = banner_text(doc["event"], doc).replace('"', "'")
        script = f'display notification "{text}" with title "emif-daemon"'
        subprocess.run(["osascript", "-e", script], capture_output=True, check=False, timeout=10)
