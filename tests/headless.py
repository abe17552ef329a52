"""Headless Chromium for the gallery tests, driven over the DevTools protocol.

A page is loaded from file://; what the browser itself reports is collected: console errors
and uncaught exceptions, resources that failed to load, and every <img> that did not decode
(lazy images are switched to eager first, so each one is fetched). Screenshots come from the
same tab.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import websocket

from tests.helpers import free_port

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SKIP_REASON = (
    "no Chromium on PATH: install Debian's chromium package (apt-get install chromium; "
    ".ci/run does it in CI) to run the browser checks"
)

# Every image fetched and decoded; then what the tests look at, in one round trip.
INSPECT = """
(async () => {
  const images = Array.from(document.images);
  for (const img of images) img.loading = "eager";
  await Promise.all(images.map((img) => img.decode().catch(() => null)));
  const box = (el) => { const r = el.getBoundingClientRect(); return {top: r.top, left: r.left,
    width: r.width, height: r.height}; };
  return JSON.stringify({
    images: images.length,
    broken: images.filter((i) => !i.complete || i.naturalWidth === 0)
                  .map((i) => i.getAttribute("src")),
    links: Array.from(document.querySelectorAll("a[href], area[href]")).map((a) => a.href),
    text: document.body.innerText,
    entries: Array.from(document.querySelectorAll("article.entry")).map((a) => ({
      id: a.id, text: a.innerText,
      panels: Array.from(a.querySelectorAll("figure.stage")).map((f) => ({
        kind: f.className.replace("stage ", ""), box: box(f),
        img: f.querySelector("img") ? box(f.querySelector("img")) : null})),
    })),
  });
})()
"""


def find_chromium() -> str | None:
    return next((path for name in NAMES if (path := shutil.which(name))), None)


@dataclass
class PageReport:
    url: str
    console_errors: list[str] = field(default_factory=list)
    failed_loads: list[str] = field(default_factory=list)
    images: int = 0
    broken_images: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    text: str = ""
    entries: list[dict[str, Any]] = field(default_factory=list)

    def missing_link_targets(self) -> list[str]:
        """file:// links whose file or folder does not exist."""
        out = []
        for link in self.links:
            parts = urlsplit(link)
            if parts.scheme == "file" and not Path(unquote(parts.path)).exists():
                out.append(link)
        return out


class Browser:
    """One headless Chromium with one tab, for a `with` block."""

    def __init__(self, binary: str, workdir: Path, width: int = 1400, height: int = 1000) -> None:
        self.binary = binary
        self.workdir = workdir
        self.size = (width, height)
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: Any = None
        self._session = ""

    def __enter__(self) -> Browser:
        port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "chromium.log", "ab") as log:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--hide-scrollbars",
                    "--remote-allow-origins=*",
                    f"--remote-debugging-port={port}",
                    f"--user-data-dir={self.workdir / 'profile'}",
                    "about:blank",
                ],
                stdout=log,
                stderr=log,
            )
        try:
            self._connect(port)
        except BaseException:
            self._stop()
            raise
        return self

    def _connect(self, port: int) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{port}/json/version"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    ws_url = json.loads(answer.read())["webSocketDebuggerUrl"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.send(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            session=False,
        )
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        width, height = self.size
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)

    def _receive(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self._ws.recv())
        if "method" in message:
            self._events.append(message)
        return message

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: bool = True
    ) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        while True:
            answer = self._receive()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def _wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == method for e in self._events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self._receive()

    def open(self, path: Path) -> PageReport:
        """Load a page from file:// and report what the browser said about it."""
        url = path.resolve().as_uri()
        self._events.clear()
        self.send("Page.navigate", {"url": url})
        self._wait_for("Page.loadEventFired")
        found = self.send(
            "Runtime.evaluate", {"expression": INSPECT, "awaitPromise": True, "returnByValue": True}
        )
        if "exceptionDetails" in found:
            raise RuntimeError(f"inspection failed: {found['exceptionDetails']}")
        data = json.loads(found["result"]["value"])
        report = PageReport(
            url,
            images=data["images"],
            broken_images=data["broken"],
            links=data["links"],
            text=data["text"],
            entries=data["entries"],
        )
        self._collect(report)
        return report

    def _collect(self, report: PageReport) -> None:
        requested = {}
        for event in self._events:
            method, params = event["method"], event.get("params", {})
            if method == "Network.requestWillBeSent":
                requested[params["requestId"]] = params["request"]["url"]
            elif method == "Network.loadingFailed":
                url = requested.get(params["requestId"], "?")
                report.failed_loads.append(f"{url}: {params.get('errorText')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = params.get("args", [])
                report.console_errors.append(" ".join(str(a.get("value", a)) for a in args))
            elif method == "Runtime.exceptionThrown":
                report.console_errors.append(json.dumps(params.get("exceptionDetails")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                report.console_errors.append(f"{entry.get('text')} ({entry.get('url', '')})")

    def screenshot(self, path: Path) -> None:
        shot = self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))
