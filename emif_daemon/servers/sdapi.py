"""HTTP client for the sdapi of Draw Things and AUTOMATIC1111; knows nothing of folders.

Outcomes are classified once, here, by what the server said (docs/servers.md#errors): a
server that cannot be reached raises ServerUnavailable (wait, no attempt charged); a failure
while generating, a timeout or an answer that is not an image raise TransientError (an
attempt); a request the server refuses, or a setup error that would repeat for every item,
raises PermanentItemError with the server's own text.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import requests
import urllib3

from emif_daemon.errors import (
    EmifError,
    PermanentItemError,
    ServerUnavailable,
    StageUnavailable,
    TransientError,
)
from emif_daemon.logs import get_logger
from emif_daemon.retry import compute_backoff
from emif_daemon.servers.answer_checks import decode_image, first_image, plain_base64, read_info
from emif_daemon.servers.body import read_whole
from emif_daemon.servers.limiter import Limiter

TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"
OPTIONS = "/sdapi/v1/options"
EXTRAS = "/sdapi/v1/extra-single-image"  # A1111's upscaler-only route; answers {"image": …}


@dataclass(frozen=True)
class ServerInfo:
    kind: Literal["drawthings", "a1111", "unknown"]
    model: str | None


@dataclass(frozen=True)
class Answer:
    images: list[bytes]
    info: dict[str, Any] | None
    seconds: float
    extra_images: int = 0  # beyond those asked for (A1111 ControlNet's detected maps)
    info_error: str | None = None  # why `info` could not be read (None: read, or none sent)
    # each image's base64 as it came (valid, plain): sent on as the next pass's input
    # without encoding it again
    texts: tuple[str, ...] = ()


def detect_kind(options: dict[str, Any]) -> ServerInfo:
    """Draw Things answers /sdapi/v1/options with `model`, A1111 with `sd_model_checkpoint`."""
    if "sd_model_checkpoint" in options:
        return ServerInfo("a1111", str(options["sd_model_checkpoint"]))
    if "model" in options:
        return ServerInfo("drawthings", str(options["model"]))
    return ServerInfo("unknown", None)


def image_key(path: str) -> str:
    """The key an input image travels under: `image` for A1111's extras, else init_images."""
    return "image" if path == EXTRAS else "init_images"


def request_body(
    payload: dict[str, Any],
    init_image: bytes | None = None,
    key: str = "init_images",
    text: str | None = None,
) -> bytes:
    """The JSON body; an input image goes in as plain base64 (no `data:` prefix, no line
    breaks: Draw Things accepts nothing else), spliced in rather than passed through the
    JSON encoder, since the base64 alphabet needs no escaping. `init_images` holds a list
    of one image, A1111's extras `image` one string. `text`: the image's base64 already (an
    answer's, which decoded strictly), so it is not encoded again."""
    payload = {k: v for k, v in payload.items() if k not in ("init_images", "image")}
    if init_image is None:
        return json.dumps(payload).encode()
    empty = "[]" if key == "init_images" else '""'
    head = json.dumps({**payload, key: [] if key == "init_images" else ""})
    cut = head.rindex(empty) + 1  # the image's key is the last one
    quote = b'"' if key == "init_images" else b""
    encoded = text.encode("ascii") if text is not None else base64.b64encode(init_image)
    return b"".join((head[:cut].encode(), quote, encoded, quote, head[cut:].encode()))


# Draw Things answers every error with 422. These texts refuse the request itself or name a
# file that is not there: another attempt fails the same way. Any other text (or none) was
# raised while generating and is worth a retry (docs/servers.md#errors).
DT_REFUSALS = (
    "Unrecognized keys: [",
    "More than one key for ",
    "Value for ",
    "Invalid value for ",
    "typeMismatch(",
    "valueNotFound(",
    "keyNotFound(",
    "dataCorrupted(",
    "Data in init_images did not represent a valid image",
    "Failed to convert image into tensor",
    "init_images height doesn't match ",
    "init_images width doesn't match ",
    "init_images is not supported for text-to-image",
    "Missing 'model' parameter",
    "Missing prompt",
    "Model names may not have any ",
    'Unrecognized model name "',
    "Missing files for model",
    "Missing file: ",
)


def error_detail(content: bytes, reason: str = "") -> str:
    """The server's own explanation: `detail`, else `errors` (where A1111 puts the message
    of a 500, `detail` being empty), else the body."""
    try:
        body = json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace").strip()[:500] or reason
    if not isinstance(body, dict):
        return json.dumps(body)[:500]
    for key in ("detail", "errors"):
        text = body.get(key)
        if text:
            return text if isinstance(text, str) else json.dumps(text)[:500]
    return "" if "detail" in body else json.dumps(body)[:500]


def _a1111_cannot(detail: str) -> bool:
    """An A1111 500 that no retry cures: a name it does not have, an image it cannot read."""
    text = detail.lower()
    return (
        "could not find checkpoint" in text
        or "could not find upscaler" in text
        or (text.startswith("model '") and text.endswith("not found"))
        or "invalid encoded image" in text
        or "is not in list" in text
    )


def failure(status: int, detail: str, kind: str) -> EmifError:
    """What an HTTP error means for the item, by what the server said."""
    text = detail or "(no reason given)"
    if status == 401:
        return PermanentItemError(
            f"the server refused the credentials (HTTP 401: {text}); set server.api_user and "
            "server.api_password as in its --api-auth"
        )
    if kind == "drawthings" and status == 422:
        if detail.startswith(DT_REFUSALS):
            return PermanentItemError(f"Draw Things refused the request (HTTP 422): {detail}")
        why = detail or "no reason given: the app is not ready (is a project open?)"
        return TransientError(f"Draw Things failed while generating (HTTP 422): {why}")
    if status >= 500:
        if kind == "a1111" and _a1111_cannot(detail):
            return PermanentItemError(f"AUTOMATIC1111 cannot do this (HTTP {status}): {detail}")
        return TransientError(f"server error (HTTP {status}): {text}")
    return PermanentItemError(f"server refused the request (HTTP {status}): {text}")


def parse_answer(body: object, expect: int, seconds: float, key: str = "images") -> Answer:
    """The images of a 200 answer; A1111's extras answers one `image`, not `images`."""
    if key == "image" and isinstance(body, dict) and "image" in body:
        body = {**body, "images": [body["image"]]}
    if not isinstance(body, dict) or not isinstance(body.get("images"), list):
        raise TransientError(f"answer has no `{key}`")
    images = body["images"]
    info, why = read_info(body.get("info")) if key == "images" else (None, None)
    first = first_image(info)
    if len(images) < first + expect:
        grid = f" after the {first} A1111 says come first" if first else ""
        raise TransientError(
            f"server returned {len(images)} image(s), expected {expect}{grid}"
            " (Draw Things returns none when no project is open)"
        )
    # Only what was asked for: A1111 puts a grid first (save_images with a batch), and its
    # ControlNet appends the detected maps after the images.
    texts = tuple(plain_base64(text) for text in images[first : first + expect])
    decoded = [decode_image(text) for text in texts]
    extra = len(images) - first - expect
    return Answer(decoded, info, seconds, extra, why, texts)


def redirect_refusal(url: str, status: int, location: str | None) -> str:
    """Why a redirect is refused: following it would send the prompts and the images (or
    the credentials) to whatever address it names."""
    to = f"to {location}" if location else "without a Location"
    return (
        f"{url} answered HTTP {status}, redirecting {to}; the daemon never follows a "
        "redirect (it would send the prompts and images there), so nothing was sent to it; "
        "set server.url (or upscale.server_url) to the address the server itself answers on"
    )


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


class Server:
    """One sdapi server, shared by every stage that uses its URL (one outage log, one limiter)."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        slots: int = 1,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.auth = auth
        self.limiter = Limiter(slots)
        self.info: ServerInfo | None = None
        self.log = get_logger(server=self.url)
        self._down = False
        self._lock = threading.Lock()

    def get_json(self, path: str) -> Any:
        """GET a JSON route (settings, the A1111 list endpoints); None when the server has
        no such route (404). Raises ServerUnavailable when it cannot be reached, and
        StageUnavailable when it refuses our credentials or redirects elsewhere."""
        try:
            response = requests.get(
                self.url + path,
                timeout=(self.connect_timeout, max(self.connect_timeout, 30)),
                headers={"Connection": "close"},
                auth=self.auth,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            self._mark_down(exc)
            raise ServerUnavailable(f"{self.url} does not answer: {exc}") from exc
        if response.is_redirect or 300 <= response.status_code < 400:
            raise StageUnavailable(
                redirect_refusal(
                    self.url + path, response.status_code, response.headers.get("Location")
                )
            )
        if response.status_code == 401:
            raise StageUnavailable(
                f"server.api_user / server.api_password: {self.url} refused them (HTTP 401 "
                f"{error_detail(response.content)}); set them as in the server's --api-auth"
            )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            detail = error_detail(response.content, response.reason)
            raise ServerUnavailable(
                f"{self.url}{path} answered HTTP {response.status_code}: {detail}"
            )
        try:
            return response.json()
        except ValueError:  # Draw Things answers an empty 200 when it cannot encode its settings
            return None

    def probe(self) -> ServerInfo:
        """Ask which server this is (GET /sdapi/v1/options) and log it."""
        options = self.get_json(OPTIONS)
        if not isinstance(options, dict):  # no API yet (404), or not JSON
            exc = ServerUnavailable(f"{self.url}{OPTIONS} gave no settings (is the API on?)")
            self._mark_down(exc)
            raise exc
        info = detect_kind(options)
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
            try:
                self.probe()
                return
            except StageUnavailable:
                return  # it answers, but not to us: the stage's check will say so
            except ServerUnavailable:
                pass
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
        init_text: str | None = None,
        check: Callable[[], None] | None = None,
    ) -> Answer:
        """One generation on a fresh connection (Draw Things drops idle keep-alives after 5 s).

        `check` is called once the request's turn has come, right before sending: it raises
        to send nothing (a stop requested while this request waited for the server).
        """
        if self.info is None:
            try:
                self.probe()
            except StageUnavailable as exc:  # credentials refused after an outage
                raise PermanentItemError(str(exc)) from exc
        key = image_key(path)
        body = request_body(payload, init_image, key, init_text)  # before taking the slot
        with self.limiter.slot(priority):
            if check is not None:
                check()
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
                    auth=self.auth,
                    stream=True,
                    allow_redirects=False,  # a redirect would take the whole body elsewhere
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
            if 300 <= response.status_code < 400:
                location = response.headers.get("Location")
                raise PermanentItemError(
                    redirect_refusal(self.url + path, response.status_code, location)
                )
            content = read_whole(response, started + self.read_timeout, self.read_timeout)
        if response.status_code != 200:
            # cpp-httplib puts the reason of a 500 in a header, with an empty body
            reason = response.headers.get("EXCEPTION_WHAT") or response.reason
            kind = self.info.kind if self.info else "unknown"
            raise failure(response.status_code, error_detail(content, reason), kind)
        try:
            answer = json.loads(content)
        except ValueError as exc:
            raise TransientError("answer is not JSON") from exc
        return parse_answer(answer, expect, seconds, "image" if key == "image" else "images")
