"""A loopback sdapi server that behaves like Draw Things or AUTOMATIC1111, for the tests.

Each mode does what its server's source says it does (docs/servers.md), never anything
kinder: Draw Things (tests/fake_drawthings.py, driven by tests/drawthings_parameters.json)
refuses unknown keys, aliases sent twice, values out of range and files it does not have with
422 and its own texts, fails while generating with 422 too, and silently drops a refiner or a
ControlNet it cannot use; AUTOMATIC1111 (tests/fake_a1111.py) ignores unknown keys, falls back
silently, puts the message of a 500 in `errors`, and destroys the picture at img2img strength 0.
Every request is recorded with what really ran (`applied`), what was silently not done
(`dropped`) and, on Draw Things, which keys came from the app window (`app_values`).

Faults are queued per test and used by the next generation request (or the next one sending a
given seed): "500", "drop", "garbage", "badpng", "empty", "extra", "ok" (none), on
AUTOMATIC1111 "noinfo" and "badinfo" (an answer without `info`, or one that is not JSON), on Draw
Things "gen422" (a failure while generating) and "notready" (a 422 with no reason, as when no
delegate is ready), and answers a real sampler gives when it ruins a picture — valid PNGs of
the right size: "blobs" (one step from pure noise), "flat", "blurred", "onecolour", "noise"
(tests/fake_images.py `destroyed`).
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fake_a1111 import A1111App, Failure, run_job
from tests.fake_drawthings import UNSENDABLE, DrawThingsApp, Refusal, decode, generate
from tests.fake_images import DESTROYED, Pictures, destroyed, make_png

__all__ = ["Recorded", "SdapiHTTPServer", "SdapiState", "make_png", "png_dims", "start"]

DT_ROUTES = {"/sdapi/v1/txt2img": "txt2img", "/sdapi/v1/img2img": "img2img"}
A1_ROUTES = {**DT_ROUTES, "/sdapi/v1/extra-single-image": "extra-single-image"}
GENERATION_FAILED = "The operation couldn’t be completed. (DrawThings.ImageGeneratorError error 1.)"


def png_dims(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@dataclass
class Recorded:
    path: str  # txt2img, img2img, extra-single-image; "GET <path>" for a GET
    payload: dict[str, Any]
    status: int
    images: list[bytes] = field(default_factory=list)
    started: float = 0.0  # monotonic: the server began working on it
    finished: float = 0.0  # its answer was ready
    received: float = 0.0  # its request line had arrived
    applied: dict[str, Any] = field(default_factory=dict)  # what really ran
    dropped: list[str] = field(default_factory=list)  # asked for, silently not done
    app_values: dict[str, Any] = field(default_factory=dict)  # Draw Things: from the window

    @property
    def is_generation(self) -> bool:
        return not self.path.startswith(("GET ", "POST "))


class SdapiState:
    def __init__(self, mode: str = "drawthings", latency: float = 0.0) -> None:
        self.mode = mode
        self.latency = latency
        self.faults: deque[str] = deque()
        self.faults_by_seed: dict[int, deque[str]] = {}
        self.requests: list[Recorded] = []
        self.gpu = threading.Lock()  # one generation at a time, like the real servers
        self.lock = threading.Lock()
        self.busy_s = 0.0
        self.active = 0  # requests being served now
        self.pictures = Pictures()
        self.app = DrawThingsApp()
        self.a1111 = A1111App()
        # path → (status, Location): answered instead, before anything else (a proxy, a
        # server moved to another address)
        self.redirects: dict[str, tuple[int, str]] = {}

    @property
    def fixed_images(self) -> dict[tuple[int, int], bytes]:
        """Answers of these sizes are these bytes (the benchmarks' photographs)."""
        return self.pictures.fixed

    @fixed_images.setter
    def fixed_images(self, images: dict[tuple[int, int], bytes]) -> None:
        self.pictures.fixed = images

    def fault(self, *kinds: str, seed: int | None = None) -> None:
        """Faults for the next generation requests; with `seed`, for the next requests
        sending that seed (so concurrent workers cannot take each other's faults)."""
        with self.lock:
            queue = self.faults if seed is None else self.faults_by_seed.setdefault(seed, deque())
            queue.extend(kinds)

    def next_fault(self, seed: Any = None) -> str | None:
        with self.lock:
            own = self.faults_by_seed.get(seed) if isinstance(seed, int) else None
            if own:
                return own.popleft()
            return self.faults.popleft() if self.faults else None

    def generations(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.is_generation]

    def record(self, rec: Recorded) -> None:
        with self.lock:
            self.requests.append(rec)


def dt_error(detail: str) -> dict[str, Any]:
    return {"error": "HTTPException", "detail": detail, "body": "", "errors": ""}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SdapiHTTPServer

    def setup(self) -> None:
        self.served = 0
        super().setup()
        # Draw Things' HTTP library: 5 s keep-alive and read timeouts, 5 requests a connection
        self.connection.settimeout(5 if self.server.state.mode == "drawthings" else 30)

    def log_message(self, *_args: Any) -> None:
        pass

    @property
    def state(self) -> SdapiState:
        return self.server.state

    @property
    def drawthings(self) -> bool:
        return self.state.mode == "drawthings"

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
            if self.drawthings:  # Swift's JSONEncoder escapes every "/"
                data = data.replace(b"/", b"\\/")
        self.served += 1
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if self._gzip(status, data):  # A1111's GZipMiddleware: answers over 1000 bytes
            data = gzip.compress(data, compresslevel=1)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(data)))
        if self.drawthings:
            self.send_header("Keep-Alive", "timeout=5, max=5")
            if self.served >= 5:
                self.close_connection = True
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _gzip(self, status: int, data: bytes) -> bool:
        accepted = "gzip" in self.headers.get("Accept-Encoding", "")
        return not self.drawthings and status == 200 and len(data) > 1000 and accepted

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _authorised(self) -> bool:
        """A1111's --api-auth guards every /sdapi route."""
        auth = self.state.a1111.auth
        if self.drawthings or auth is None or not self._path().startswith("/sdapi/"):
            return True
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        sent = self.headers.get("Authorization")
        if sent == f"Basic {token}":
            return True
        # The webui's exception handler rebuilds the answer: its shape, and no
        # WWW-Authenticate header.
        detail = "Not authenticated" if sent is None else "Incorrect username or password"
        self._send(401, {"error": "HTTPException", "detail": detail, "body": "", "errors": ""})
        return False

    def _redirected(self, method: str, received: float) -> bool:
        found = self.state.redirects.get(self._path())
        if found is None:
            return False
        self.state.record(Recorded(f"{method} {self._path()}", {}, found[0], received=received))
        self._send(found[0], b"", {"Location": found[1]})
        return True

    def do_GET(self) -> None:
        received = time.monotonic()
        path = self._path()
        if self._redirected("GET", received):
            return
        self.state.record(Recorded(f"GET {path}", {}, 200, received=received))
        if not self._authorised():
            return
        if self.drawthings:
            if path in ("/", "/sdapi/v1/options"):
                self._send(200, self.state.app.state())
            else:  # cpp-httplib: 404 with no body
                self._send(404, b"")
            return
        found = self.state.a1111.get(path)
        self._send(200, found) if found is not None else self._send(404, {"detail": "Not Found"})

    do_HEAD = do_GET

    def do_PUT(self) -> None:
        self._send(
            400 if self.drawthings else 405,
            b"" if self.drawthings else {"detail": "Method Not Allowed"},
        )

    def do_POST(self) -> None:
        received = time.monotonic()
        with self.state.lock:
            self.state.active += 1
        try:
            self._post(received)
        finally:
            with self.state.lock:
                self.state.active -= 1

    def _post(self, received: float) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self._redirected("POST", received):
            return
        routes = DT_ROUTES if self.drawthings else A1_ROUTES
        path = routes.get(self._path())
        if path is None or not self._authorised():
            if path is None:
                self._send(404, b"" if self.drawthings else {"detail": "Not Found"})
            return
        # One request at a time, like the real servers. Parsing the request and encoding
        # the answer are the server's work, so they count as busy; the transfers do not.
        with self.state.gpu:
            started = time.monotonic()
            rec = Recorded(path, _shown(raw), 200, received=received, started=started)
            status, body, headers = self._work(path, raw, rec)
            if self.state.latency:
                time.sleep(self.state.latency)
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
                if self.drawthings:
                    body = body.replace(b"/", b"\\/")
            rec.status, rec.finished = status, time.monotonic()
            with self.state.lock:
                self.state.busy_s += rec.finished - started
            self.state.record(rec)
        if status == -1:  # drop the connection without an answer
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._send(status, body, headers)

    def _work(self, path: str, raw: bytes, rec: Recorded) -> tuple[int, Any, dict[str, str]]:
        fault = self.state.next_fault(rec.payload.get("seed"))
        if fault == "drop":
            return -1, b"", {}
        if fault == "500":
            if self.drawthings:  # a C++ exception escaping the handler: reason in a header
                return 500, b"", {"EXCEPTION_WHAT": "std::bad_alloc"}
            oom = "CUDA out of memory. Tried to allocate 2.00 GiB"
            return 500, {"error": "OutOfMemoryError", "detail": "", "body": "", "errors": oom}, {}
        try:
            body, key = self._generate(path, raw, rec, fault)
        except Refusal as exc:
            return 422, dt_error(exc.detail), {}
        except Failure as exc:
            return exc.status, exc.body, {}
        if fault in DESTROYED:
            seed = rec.payload.get("seed")
            rec.images = [
                destroyed(fault, i, seed if isinstance(seed, int) else 0) for i in rec.images
            ]
            body = _with_images(body, key, rec.images)
        return 200, _spoil(body, key, fault), {}

    def _generate(
        self, path: str, raw: bytes, rec: Recorded, fault: str | None
    ) -> tuple[dict[str, Any], str]:
        state = self.state
        if self.drawthings:
            job = decode(state.app, path, raw)
            if fault == "gen422":
                raise Refusal(GENERATION_FAILED)
            if fault == "notready":
                raise Refusal("")
            images, rec.applied = generate(state.app, state.pictures, path, job)
            rec.dropped = job.dropped
            own = job.sent | UNSENDABLE | ({"strength"} if path == "txt2img" else set())
            rec.app_values = {k: v for k, v in state.app.state().items() if k not in own}
            rec.images = images
            return {"images": [base64.b64encode(i).decode() for i in images]}, "images"
        body, images, rec.applied, rec.dropped = run_job(state.a1111, state.pictures, path, raw)
        rec.images = images
        return body, "image" if "image" in body else "images"


def _shown(raw: bytes) -> dict[str, Any]:
    """The request as recorded: without its images."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return (
        {k: v for k, v in doc.items() if k not in ("init_images", "image")}
        if isinstance(doc, dict)
        else {}
    )


def _with_images(body: dict[str, Any], key: str, images: list[bytes]) -> dict[str, Any]:
    """The answer with these images in place of the ones asked for (A1111 keeps a grid
    first and ControlNet maps after them)."""
    texts = [base64.b64encode(i).decode() for i in images]
    if key == "image":
        return {**body, "image": texts[0]}
    info = json.loads(body["info"]) if isinstance(body.get("info"), str) else {}
    first = info.get("index_of_first_image", 0)
    return {**body, key: [*body[key][:first], *texts, *body[key][first + len(texts) :]]}


def _spoil(body: dict[str, Any], key: str, fault: str | None) -> dict[str, Any]:
    """The answer's images as a fault wants them."""
    if fault is None or fault == "ok":
        return body
    images = [body[key]] if key == "image" else list(body[key])
    if fault == "garbage":
        images = ["this is not base64!!" for _ in images]
    elif fault == "badpng":
        images = [base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode() for _ in images]
    elif fault == "empty":
        images = []
    elif fault == "extra":
        images.append(base64.b64encode(make_png(64, 64, 1)).decode())
    elif fault == "noinfo":
        body = {k: v for k, v in body.items() if k != "info"}
    elif fault == "badinfo":
        body = {**body, "info": "Steps: 30, Sampler: DPM++ 2M"}  # an infotext, not JSON
    if key == "image":
        return {**body, "image": images[0] if images else ""}
    return {**body, "images": images}


class SdapiHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: SdapiState, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.state = state

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def start(
    mode: str = "drawthings", latency: float = 0.0, port: int = 0
) -> tuple[SdapiHTTPServer, threading.Thread]:
    server = SdapiHTTPServer(SdapiState(mode, latency), port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return server, thread


if __name__ == "__main__":  # a server for benchmarks and manual runs: python -m tests.sdapi_server
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--mode", default="drawthings", choices=("drawthings", "a1111"))
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    srv, th = start(args.mode, args.latency, args.port)
    print(srv.url, flush=True)
    th.join()
