"""HTTP client for the sdapi of Draw Things and AUTOMATIC1111; knows nothing of folders.

Outcomes are classified once, here (docs/servers.md#errors): a server that cannot be reached
raises ServerUnavailable (wait, no attempt charged); 5xx, a timeout while generating or an
answer that is not an image raise TransientError (an attempt); 4xx raises PermanentItemError
with the server's own message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import heapq
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import requests
import urllib3

from .errors import PermanentItemError, ServerUnavailable, TransientError
from .logs import get_logger
from .retry import compute_backoff

TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"
OPTIONS = "/sdapi/v1/options"
DECODE_SLICE = 1 << 20  # characters of base64 per decoding step (a multiple of 4)


@dataclass(frozen=True)
class ServerInfo:
    kind: Literal["drawthings", "a1111", "unknown"]
    model: str | None


@dataclass(frozen=True)
class Answer:
    images: list[bytes]
    info: dict[str, Any] | None
    seconds: float


def detect_kind(options: dict[str, Any]) -> ServerInfo:
    """Draw Things answers /sdapi/v1/options with `model`, A1111 with `sd_model_checkpoint`."""
    if "sd_model_checkpoint" in options:
        return ServerInfo("a1111", str(options["sd_model_checkpoint"]))
    if "model" in options:
        return ServerInfo("drawthings", str(options["model"]))
    return ServerInfo("unknown", None)


def decode_image(text: object) -> bytes:
    """Base64 of one image; a `data:` prefix is accepted on answers (never sent)."""
    if not isinstance(text, str):
        raise TransientError(f"answer image is {type(text).__name__}, expected base64 text")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        # In slices, so another worker waiting to send its request gets the interpreter
        # lock between them instead of after 10 ms of decoding a 2048² answer.
        if len(text) <= DECODE_SLICE:
            return binascii.a2b_base64(text, strict_mode=True)
        if len(text) % 4:
            raise binascii.Error("base64 length is not a multiple of 4")
        return b"".join(
            binascii.a2b_base64(text[i : i + DECODE_SLICE], strict_mode=True)
            for i in range(0, len(text), DECODE_SLICE)
        )
    except (binascii.Error, ValueError) as exc:
        raise TransientError(f"answer image is not valid base64: {exc}") from exc


def request_body(payload: dict[str, Any], init_image: bytes | None = None) -> bytes:
    """The JSON body; an init image goes in as plain base64 (no `data:` prefix, no line
    breaks: Draw Things accepts nothing else), spliced in rather than passed through the
    JSON encoder, since the base64 alphabet needs no escaping."""
    payload = {k: v for k, v in payload.items() if k != "init_images"}
    if init_image is None:
        return json.dumps(payload).encode()
    head = json.dumps({**payload, "init_images": []})
    cut = head.rindex("[]") + 1  # init_images is the last key
    return b"".join(
        (head[:cut].encode(), b'"', base64.b64encode(init_image), b'"', head[cut:].encode())
    )


def error_detail(content: bytes, reason: str = "") -> str:
    """The server's own explanation: `detail` of the A1111-style error JSON, else the body."""
    try:
        body = json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace").strip()[:500] or reason
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)[:500]
    return json.dumps(body)[:500]


def parse_answer(body: object, expect: int, seconds: float) -> Answer:
    if not isinstance(body, dict) or not isinstance(body.get("images"), list):
        raise TransientError("answer has no `images` list")
    images = body["images"]
    if len(images) < expect:
        raise TransientError(
            f"server returned {len(images)} image(s), expected {expect}"
            " (Draw Things returns none when no project is open)"
        )
    info = body.get("info")
    if isinstance(info, str):
        with contextlib.suppress(ValueError):
            info = json.loads(info)
    # Only what was asked for: A1111's ControlNet appends its detected maps.
    decoded = [decode_image(text) for text in images[:expect]]
    return Answer(decoded, info if isinstance(info, dict) else None, seconds)


def _is_connect_failure(exc: BaseException) -> bool:
    """True when the TCP connection was never made (refused, unroutable, connect timeout)."""
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(
            cur,
            urllib3.exceptions.NewConnectionError
            | urllib3.exceptions.ConnectTimeoutError
            | ConnectionRefusedError
            | requests.ConnectTimeout,
        ):
            return True
        stack.extend(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))
        stack.append(getattr(cur, "reason", None))
        stack.append(cur.__cause__ if isinstance(cur, BaseException) else None)
        stack.append(cur.__context__ if isinstance(cur, BaseException) else None)
    return False


class Limiter:
    """At most `slots` requests in flight; waiting callers are served highest priority first."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._cond = threading.Condition()
        self._queue: list[tuple[int, int]] = []
        self._seq = itertools.count()

    @contextlib.contextmanager
    def slot(self, priority: int) -> Iterator[None]:
        ticket = (-priority, next(self._seq))
        with self._cond:
            heapq.heappush(self._queue, ticket)
            while not (self._free > 0 and self._queue[0] == ticket):
                self._cond.wait()
            heapq.heappop(self._queue)
            self._free -= 1
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()


class Server:
    """One sdapi server, shared by every stage that uses its URL (one outage log, one limiter)."""

    def __init__(
        self, url: str, *, connect_timeout: float, read_timeout: float, slots: int = 1
    ) -> None:
        self.url = url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.limiter = Limiter(slots)
        self.info: ServerInfo | None = None
        self.log = get_logger(server=self.url)
        self._down = False
        self._lock = threading.Lock()

    def probe(self) -> ServerInfo:
        """Ask which server this is (GET /sdapi/v1/options) and log it."""
        try:
            response = requests.get(
                self.url + OPTIONS,
                timeout=(self.connect_timeout, max(self.connect_timeout, 30)),
                headers={"Connection": "close"},
            )
            response.raise_for_status()
            info = detect_kind(response.json())
        except (requests.RequestException, ValueError) as exc:
            self._mark_down(exc)
            raise ServerUnavailable(f"{self.url} does not answer: {exc}") from exc
        with self._lock:
            was_down, self._down = self._down, False
            self.info = info
        if was_down:
            self.log.info("server_back")
        self.log.info("server_detected", kind=info.kind, model=info.model)
        return info

    def _mark_down(self, exc: BaseException) -> None:
        with self._lock:
            was_down, self._down = self._down, True
            self.info = None
        if not was_down:
            self.log.error(
                "server_unreachable",
                error=str(exc),
                hint="is the Draw Things HTTP API server on (or A1111 started with --api)?",
            )

    def wait_until_up(self, stop: threading.Event, cap_s: float = 10.0) -> None:
        """Probe with capped exponential backoff until the server answers or we stop."""
        for attempt in itertools.count(1):
            if stop.is_set():
                return
            with contextlib.suppress(ServerUnavailable):
                self.probe()
                return
            if stop.wait(compute_backoff(attempt, base=0.5, cap=cap_s)):
                return

    def post(
        self,
        path: str,
        payload: dict[str, Any],
        *,
        priority: int,
        expect: int,
        init_image: bytes | None = None,
    ) -> Answer:
        """One generation on a fresh connection (Draw Things drops idle keep-alives after 5 s)."""
        if self.info is None:
            self.probe()
        body = request_body(payload, init_image)  # before taking the slot: no idle server
        with self.limiter.slot(priority):
            self.log.info("request_sent", path=path)
            started = time.monotonic()
            try:
                # stream=True returns once the headers are in: the server has finished
                # generating, so the next request may go while this answer downloads.
                response = requests.post(
                    self.url + path,
                    data=body,
                    timeout=(self.connect_timeout, self.read_timeout),
                    headers={"Connection": "close", "Content-Type": "application/json"},
                    stream=True,
                )
            except requests.ReadTimeout as exc:
                # The server is still busy with it: never re-send at once.
                raise TransientError(f"no answer within {self.read_timeout:g} s") from exc
            except requests.RequestException as exc:
                if _is_connect_failure(exc):
                    self._mark_down(exc)
                    raise ServerUnavailable(f"{self.url} refused the connection") from exc
                raise TransientError(f"connection dropped while generating: {exc}") from exc
            seconds = time.monotonic() - started
        with response:
            try:  # the body is downloaded outside the slot, in one read
                content = response.raw.read(decode_content=True)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise TransientError(f"connection dropped while answering: {exc}") from exc
        return self._answer(response.status_code, response.reason, content, expect, seconds)

    def _answer(
        self, status: int, reason: str, content: bytes, expect: int, seconds: float
    ) -> Answer:
        if 400 <= status < 500:
            detail = error_detail(content, reason)
            raise PermanentItemError(f"server refused the request (HTTP {status}): {detail}")
        if status >= 500:
            raise TransientError(f"server error (HTTP {status}): {error_detail(content, reason)}")
        try:
            body = json.loads(content)
        except ValueError as exc:
            raise TransientError("answer is not JSON") from exc
        return parse_answer(body, expect, seconds)
