"""A loopback sdapi server that behaves like Draw Things (or AUTOMATIC1111) for the tests.

Draw Things mode, after docs/servers.md: unknown keys → 422 "Unrecognized
keys", every error is a 422 JSON with `detail`, answers are `{"images": [...]}` only, an
img2img init image must match width/height and be plain base64, one generation at a time.
AUTOMATIC1111 mode: unknown keys ignored, `data:` prefixes stripped, answers carry
`parameters` and an `info` JSON string with the seed.

Faults are queued per test: "500", "422", "garbage", "badpng", "drop", "empty", "extra".
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DRAW_THINGS_KEYS = {
    "prompt",
    "negative_prompt",
    "model",
    "width",
    "height",
    "seed",
    "seed_mode",
    "steps",
    "guidance_scale",
    "cfg_scale",
    "sampler",
    "sampler_name",
    "sampler_index",
    "batch_count",
    "n_iter",
    "batch_size",
    "strength",
    "denoising_strength",
    "clip_skip",
    "image_guidance",
    "mask_blur",
    "mask_blur_outset",
    "sharpness",
    "shift",
    "clip_weight",
    "hires_fix",
    "enable_hr",
    "hires_fix_width",
    "firstphase_width",
    "hires_fix_height",
    "firstphase_height",
    "hires_fix_strength",
    "refiner_model",
    "refiner_start",
    "upscaler",
    "upscaler_scale",
    "upscaler_scale_factor",
    "loras",
    "controls",
    "tiled_decoding",
    "decoding_tile_width",
    "decoding_tile_height",
    "decoding_tile_overlap",
    "tiled_diffusion",
    "diffusion_tile_width",
    "diffusion_tile_height",
    "diffusion_tile_overlap",
    "stochastic_sampling_gamma",
    "preserve_original_after_inpaint",
    "zero_negative_prompt",
    "aesthetic_score",
    "negative_aesthetic_score",
    "original_width",
    "original_height",
    "target_width",
    "target_height",
    "negative_original_width",
    "negative_original_height",
    "crop_top",
    "crop_left",
    "negative_prompt_for_image_prior",
    "image_prior_steps",
    "restore_faces",
    "init_images",
}
CONTROL_KEYS = {
    "weight", "guidanceStart", "guidanceEnd", "noPrompt", "globalAveragePooling",
    "downSamplingRate", "controlImportance", "inputOverride", "targetBlocks",
}  # fmt: skip
SAMPLERS = {"DPM++ 2M Karras", "Euler a", "DDIM", "UniPC", "DPM++ SDE Karras", "TCD", "LCM"}


def make_png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG, made without Pillow so the server costs the tests little CPU."""
    color = bytes(((seed >> s) & 0xFF) for s in (0, 8, 16))
    row = b"\x00" + color * width
    raw = zlib.compress(row * height, 1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def png_dims(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@dataclass
class Recorded:
    path: str
    payload: dict[str, Any]
    status: int
    images: list[bytes] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0


class SdapiState:
    def __init__(self, mode: str = "drawthings", latency: float = 0.0) -> None:
        self.mode = mode
        self.latency = latency
        self.faults: deque[str] = deque()
        self.requests: list[Recorded] = []
        self.gpu = threading.Lock()  # one generation at a time, like the real servers
        self.lock = threading.Lock()
        self.fixed_images: dict[tuple[int, int], bytes] = {}
        self.busy_s = 0.0

    def fault(self, *kinds: str) -> None:
        with self.lock:
            self.faults.extend(kinds)

    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None

    def generations(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path != "options"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SdapiHTTPServer

    def log_message(self, *_args: Any) -> None:
        pass

    @property
    def state(self) -> SdapiState:
        return self.server.state

    def _send(self, status: int, body: dict[str, Any] | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, detail: str) -> None:
        self._send(status, {"error": "HTTPException", "detail": detail, "body": "", "errors": ""})

    def do_GET(self) -> None:
        if self.path in ("/", "/sdapi/v1/options"):
            with self.state.lock:
                self.state.requests.append(Recorded("options", {}, 200))
            if self.state.mode == "drawthings":
                self._send(200, {"model": "sd_xl_base_1.0_f16.ckpt", "steps": 30})
            else:
                self._send(200, {"sd_model_checkpoint": "sd_xl_base_1.0.safetensors [31e35c80fc]"})
            return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)  # the transfer: the server waits for the client here
        path = self.path.rsplit("/", 1)[-1]
        if path not in ("txt2img", "img2img"):
            self._error(404, "Not Found")
            return
        # One request at a time, like the real servers. Parsing the request and encoding
        # the answer are the server's work, so they count as busy; the transfers do not.
        with self.state.gpu:
            started = time.monotonic()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
            if payload is None:
                status, images, body = 422, [], {"detail": "body is not JSON"}
            else:
                status, images, body = self._generate(path, payload)
            if self.state.latency:
                time.sleep(self.state.latency)
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            finished = time.monotonic()
            with self.state.lock:
                self.state.busy_s += finished - started
                shown = {k: v for k, v in (payload or {}).items() if k != "init_images"}
                self.state.requests.append(Recorded(path, shown, status, images, started, finished))
        if status == -1:  # drop the connection without an answer
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._send(status, data)

    def _generate(self, path: str, payload: dict[str, Any]) -> tuple[int, list[bytes], Any]:
        fault = self.state.next_fault()
        if fault == "drop":
            return -1, [], b""
        if fault == "500":
            return 500, [], {"error": "RuntimeError", "detail": "CUDA out of memory"}
        if fault == "422":
            return 422, [], {"error": "HTTPException", "detail": "Missing files for model"}
        problem = self._validate(path, payload)
        if problem:
            return 422, [], {"error": "HTTPException", "detail": problem, "body": "", "errors": ""}
        width, height = self._output_size(path, payload)
        count = int(payload.get("batch_size", 1)) * int(
            payload.get("batch_count", payload.get("n_iter", 1))
        )
        seed = int(payload.get("seed", 0))
        images = [self._image(width, height, seed + k) for k in range(count)]
        encoded = [base64.b64encode(i).decode() for i in images]
        if fault == "garbage":
            encoded = ["this is not base64!!" for _ in images]
        elif fault == "badpng":
            encoded = [base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode() for _ in images]
        elif fault == "empty":
            encoded = []
        elif fault == "extra":
            encoded.append(base64.b64encode(self._image(64, 64, 1)).decode())
        if self.state.mode == "drawthings":
            return 200, images, {"images": encoded}
        info = {"seed": seed, "all_seeds": [seed + k for k in range(count)]}
        return 200, images, {"images": encoded, "parameters": payload, "info": json.dumps(info)}

    def _image(self, width: int, height: int, seed: int) -> bytes:
        fixed = self.state.fixed_images.get((width, height))
        return fixed if fixed is not None else make_png(width, height, seed)

    def _validate(self, path: str, payload: dict[str, Any]) -> str | None:
        init = payload.get("init_images")
        if path == "img2img" and not init:
            return None if self.state.mode == "drawthings" else "Init image not found"
        if self.state.mode != "drawthings":
            return None
        unknown = sorted(set(payload) - DRAW_THINGS_KEYS)
        if unknown:
            return "Unrecognized keys: " + json.dumps(unknown)
        if path == "txt2img" and init:
            return "init_images is not supported for text-to-image"
        sampler = payload.get("sampler", payload.get("sampler_name"))
        if sampler is not None and sampler not in SAMPLERS:
            return f"Invalid value for sampler_name (options: {sorted(SAMPLERS)})"
        for control in payload.get("controls") or []:
            missing = CONTROL_KEYS - set(control)
            if missing:
                return f"keyNotFound: {sorted(missing)}"
        for key in ("steps", "width", "height", "seed", "batch_size", "batch_count"):
            if key in payload and not isinstance(payload[key], int | None):
                return f"Value for {key} must be an integer"
        if path == "img2img":
            if len(init) != 1:
                return "exactly one init image is used"
            try:
                data = base64.b64decode(init[0], validate=True)
            except (binascii.Error, ValueError):
                return "Data in init_images did not represent a valid image"
            if not data.startswith(b"\x89PNG"):
                return "Data in init_images did not represent a valid image"
            w, h = png_dims(data)
            if (w, h) != (payload.get("width"), payload.get("height")):
                return (
                    f"init_images height doesn't match {h} from the parameter "
                    f"{payload.get('height')}"
                )
        return None

    def _output_size(self, path: str, payload: dict[str, Any]) -> tuple[int, int]:
        width, height = int(payload.get("width", 512)), int(payload.get("height", 512))
        if self.state.mode == "drawthings":
            width, height = width // 64 * 64, height // 64 * 64
            scale = payload.get("upscaler_scale", 0)
            if path == "img2img" and payload.get("upscaler"):
                scale = scale or 4
                width, height = width * scale, height * scale
            return width, height
        if path == "txt2img" and payload.get("enable_hr"):
            rx, ry = payload.get("hr_resize_x", 0), payload.get("hr_resize_y", 0)
            if rx and ry:
                return rx, ry
            scale = payload.get("hr_scale", 2.0)
            return int(width * scale), int(height * scale)
        return width, height


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
    parser.add_argument("--mode", default="drawthings")
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    srv, th = start(args.mode, args.latency, args.port)
    print(srv.url, flush=True)
    th.join()
