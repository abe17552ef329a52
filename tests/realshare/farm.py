"""One farm run on a shared root: daemons on separate mounts of one share, a batch through
generate and upscale, one daemon SIGKILLed mid-run and restarted, and what came out of it.

`run_farm` only measures; tests/test_realshare.py asserts on the `FarmRun` it returns, and
`python -m tests.realshare.soak` prints it for several runs in a row.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emif_daemon.png import png_shape, png_size
from emif_daemon.share.atomic import parse_temp_name
from emif_daemon.share.claims import read_claim
from tests import sdapi_server
from tests.helpers import emif_cmd, run_emif, spawn, write_config

NATIONS = ("Norway", "Chile", "Perú", "Kenya", "Japan")
CATEGORIES = ("family", "working")
WATCHED = ("stage_error", "share_unavailable", "share_back", "claim_broken", "claim_lost")
WATCHED += ("item_failed", "item_retry", "maintenance_failed", "hook_failed")


class RecordingHandler(sdapi_server.Handler):
    """Also records which input each request was for, from the request as sent: txt2img by
    its seed, img2img by the sha256 of its init image (the recorded payloads leave it out)."""

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        if self.path.endswith("txt2img"):
            key = f"seed:{doc.get('seed')}"
        else:
            init = (doc.get("init_images") or [""])[0]
            key = "init:" + hashlib.sha256(base64.b64decode(init)).hexdigest()
        with self.state.lock:
            self.server.calls.append(key)  # type: ignore[attr-defined]
        connection = self.rfile
        self.rfile = io.BufferedReader(io.BytesIO(raw))  # type: ignore[assignment]
        try:
            super().do_POST()
        finally:
            self.rfile = connection  # the next request on this connection


def start_server(latency: float) -> tuple[sdapi_server.SdapiHTTPServer, threading.Thread]:
    server, thread = sdapi_server.start("drawthings", latency)
    server.RequestHandlerClass = RecordingHandler
    server.calls = []  # type: ignore[attr-defined]
    return server, thread


def prompts_doc(images: int) -> dict[str, Any]:
    """`images` items spread over nations × categories; seeds left to the daemon."""
    jobs = [
        {"nation": n, "category": c, "prompt": f"a {c} in {n}"} for n in NATIONS for c in CATEGORIES
    ]
    per, extra = divmod(images, len(jobs))
    for i, job in enumerate(jobs):
        job["count"] = per + (1 if i < extra else 0)
    return {"name": "farm", "jobs": [j for j in jobs if j["count"]]}


def expected_outputs(doc: dict[str, Any]) -> tuple[set[str], set[str]]:
    gens = {
        f"{j['nation']}/{j['category']}/{j['nation']}_{j['category']}_{i}_1.png"
        for j in doc["jobs"]
        for i in range(1, j["count"] + 1)
    }
    return gens, {g.replace("_1.png", "_1_upscaled_1.png") for g in gens}


def farm_config(root: Path, work: Path, host: str, url: str, **overrides: Any) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "paths": {"root": str(root)},
        # the log on the local disk: smbnetfs fails every O_APPEND open (setup.sh)
        "logging": {"file": f"logs/{host}.jsonl"},
        # smbnetfs keeps no listing cache; its kernel attribute cache is 10 s (setup.sh)
        "watch": {
            "mode": "poll",
            "rescan_interval_s": 1.0,
            "settle_s": 1.0,
            "listing_cache_s": 2.0,
        },
        "coordination": {
            "host_id": host,
            "heartbeat_s": 2.0,
            "lease_s": 15.0,
            "attribute_cache_s": 10.0,
        },
        "server": {"url": url, "max_attempts": 3, "backoff_s": 0.2, "connect_timeout_s": 2.0},
        "segment": {"enabled": False},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    extra = "[generate.payload]\nwidth = 128\nheight = 128\nsteps = 4\n"
    extra += "[upscale]\nexpect_size = [256, 256]\n[[upscale.passes]]\n"
    extra += 'upscaler = "4x_ultrasharp_f16.ckpt"\nupscaler_scale = 2\nstrength = 0.0\n'
    return write_config(work / f"{host}.toml", sections, extra)


def init_root(root: Path, cfg: Path) -> str:
    """`emif init ROOT`; "" when done, else what it said. A daemon without the command (before
    docs/protocol.md had a root marker) builds the tree itself: "no init" then."""
    result = run_emif("init", str(root), "--config", str(cfg))
    if result.returncode == 0:
        return ""
    if "invalid choice: 'init'" in result.stderr:
        return "no init"
    return f"emif init exited {result.returncode}: {result.stderr.strip()[-500:]}"


def events(work: Path) -> list[dict[str, Any]]:
    """Every JSON log line of the daemons run in `work`: their log files on the local disk and
    their stderr (where a line logged before the log file is open goes), each line once, in
    time order."""
    seen: set[str] = set()
    out = []
    for path in [*sorted((work / "logs").glob("*.jsonl")), *sorted(work.glob("*.stderr"))]:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line in seen:
                continue
            seen.add(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                out.append(event)
    out.sort(key=lambda e: str(e.get("timestamp", "")))
    return out


def pngs(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*.png")
        if not p.name.startswith(".") and parse_temp_name(p.name) is None
    }


def working_claims(server_root: Path, pid: int) -> set[str]:
    """stage:item of every claim `pid` holds as working, read on the server."""
    held = set()
    for stage in ("generate", "upscale"):
        top = server_root / ".emif" / "claims" / stage
        for path in top.rglob("*.claim") if top.is_dir() else ():
            content = read_claim(path)
            if content and content.get("pid") == pid and content.get("state") == "working":
                held.add(f"{stage}:{path.relative_to(top).as_posix().removesuffix('.claim')}")
    return held


@dataclass
class FarmRun:
    """What one run did, read from the server's folder, the test server and the logs."""

    finished: bool = False
    seconds: float = 0.0
    generations: int = 0
    upscales: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    batch_done: bool = False
    in_flight: set[str] = field(default_factory=set)  # the killed daemon's claims at the kill
    duplicates: dict[str, int] = field(default_factory=dict)  # stage:item → requests
    failed_requests: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    events: dict[str, Counter[str]] = field(default_factory=dict)  # event → host → count
    dead_mounts: dict[str, str] = field(default_factory=dict)
    init: str = ""
    excerpts: list[str] = field(default_factory=list)

    @property
    def unexplained_duplicates(self) -> dict[str, int]:
        return {k: n for k, n in self.duplicates.items() if k not in self.in_flight}

    def failures(self, images: int) -> list[str]:
        """Which guarantees of docs/protocol.md#guarantees this run did not keep."""
        problems = []
        if self.init not in ("", "no init"):
            problems.append(self.init)
        if not self.finished:
            problems.append(
                f"not finished: missing {self.missing[:8]} ({len(self.missing)} in all)"
            )
        if self.unexpected:
            problems.append(f"outputs nobody asked for: {self.unexpected[:8]}")
        if (self.generations, self.upscales) != (images, images):
            problems.append(
                f"{self.generations} + {self.upscales} outputs, not {images} + {images}"
            )
        if self.partial:
            problems.append(f"partial or wrong outputs: {self.partial[:8]}")
        if self.temp_files:
            problems.append(f"temp files left: {self.temp_files[:8]}")
        if self.unexplained_duplicates:
            problems.append(
                f"duplicate requests beyond the killed daemon's in-flight items "
                f"{sorted(self.in_flight)}: {self.unexplained_duplicates}"
            )
        if self.failed_requests:
            problems.append(f"{self.failed_requests} requests the server refused")
        if any(code != 0 for code in self.exit_codes.values()):
            problems.append(f"exit codes after SIGTERM: {self.exit_codes}")
        return problems

    def summary(self) -> str:
        counts = {e: sum(c.values()) for e, c in self.events.items() if c}
        return (
            f"finished={self.finished} in {self.seconds:.0f} s; outputs {self.generations} + "
            f"{self.upscales}; requests {dict(self.requests)}; duplicates {self.duplicates} "
            f"(killed daemon in flight: {sorted(self.in_flight)}); partial {self.partial}; "
            f"temp files {self.temp_files}; failed requests {self.failed_requests}; "
            f"events {counts}; exit codes {self.exit_codes}; dead mounts {self.dead_mounts}"
        )


def run_farm(
    roots: dict[str, Path],
    server_root: Path,
    work: Path,
    *,
    images: int = 60,
    latency: float = 0.25,
    kill: str | None = "b",
    kill_after: int = 20,
    deadline_s: float = 240.0,
    stall_s: float = 60.0,
    mount_problems: Callable[[], dict[str, str]] = dict,
    append_workaround: bool = True,
    **overrides: Any,
) -> FarmRun:
    """Run the farm once. `roots`: host → the root as that host's mount shows it (one folder
    on the share); `server_root`: the same folder on the server's disk, where results are
    read. `kill`: the host SIGKILLed once `kill_after` generations exist, restarted 3 s later.
    The run ends at `deadline_s`, or once nothing moved for `stall_s`.
    `append_workaround`: run the daemons through tests/realshare/emif.py (no O_APPEND opens
    reach smbnetfs, whose bug they trigger)."""
    run = FarmRun()
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    server, thread = start_server(latency)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        cfgs = {h: farm_config(r, work, h, server.url, **overrides) for h, r in roots.items()}
        first = next(iter(roots))
        run.init = init_root(roots[first], cfgs[first])

        def start(host: str) -> None:
            args = ["run", "--no-progress", "--config", str(cfgs[host])]
            if append_workaround:
                cmd = [sys.executable, "-m", "tests.realshare.emif", *args]
            else:
                cmd = emif_cmd(*args)
            procs[host] = spawn(cmd, stderr_to=work / f"{host}.stderr")

        for host in roots:
            start(host)
        doc = prompts_doc(images)
        gens, ups = expected_outputs(doc)
        source = work / "farm.json"
        source.write_text(json.dumps(doc))
        started = time.monotonic()
        enq = run_emif("enqueue", str(source), "--config", str(cfgs[first]))
        if enq.returncode != 0:
            run.excerpts.append(f"emif enqueue exited {enq.returncode}: {enq.stderr[-500:]}")
        killed = kill is None
        progress, moved = None, time.monotonic()
        while time.monotonic() - started < deadline_s:
            made_g = pngs(server_root / "GENERATIONS")
            made_u = pngs(server_root / "UPSCALED_IMAGES")
            run.batch_done = (server_root / "queue" / "done" / source.name).exists()
            if made_g >= gens and made_u >= ups and run.batch_done:
                run.finished = True
                break
            where = [
                d
                for d in ("", "accepted", "done")
                if (server_root / "queue" / d / source.name).exists()
            ]
            now = (len(made_g), len(made_u), run.batch_done, tuple(where))
            if now != progress:
                progress, moved = now, time.monotonic()
            elif time.monotonic() - moved > stall_s:  # spare CI the rest of the deadline
                run.excerpts.append(
                    f"no progress for {stall_s:.0f} s: {len(made_g)} + {len(made_u)} outputs, "
                    f"{source.name} in queue/{'|'.join(where) or ' nowhere: the file was lost'}"
                )
                break
            if not killed and kill is not None and len(made_g) >= kill_after:
                victim = procs[kill]
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
                run.in_flight = working_claims(server_root, victim.pid)
                killed = True
                time.sleep(3)  # the host is down a moment, then launchd starts it again
                start(kill)
            if any(p.poll() is not None for p in procs.values()):
                run.excerpts.append("a daemon exited on its own")
                break
            time.sleep(0.5)
        run.seconds = time.monotonic() - started
        run.dead_mounts = mount_problems()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for host, proc in procs.items():
            try:
                run.exit_codes[host] = proc.wait(30)
            except subprocess.TimeoutExpired:
                # stuck in a call to a hung mount: abort the mount, then the process can die
                run.excerpts.append(f"{host} did not stop within 30 s of SIGTERM")
                run.dead_mounts.update(mount_problems())
                proc.kill()
                run.exit_codes[host] = proc.wait(30)
        server.shutdown()
        server.server_close()
        thread.join(10)
    _collect(run, server, server_root, work, gens, ups)
    return run


def _collect(
    run: FarmRun,
    server: sdapi_server.SdapiHTTPServer,
    server_root: Path,
    work: Path,
    gens: set[str],
    ups: set[str],
) -> None:
    made_g = pngs(server_root / "GENERATIONS")
    made_u = pngs(server_root / "UPSCALED_IMAGES")
    run.generations, run.upscales = len(made_g), len(made_u)
    run.missing = sorted((gens - made_g) | (ups - made_u))
    run.unexpected = sorted((made_g - gens) | (made_u - ups))
    answers = {}  # seed → the bytes the server sent
    for req in server.state.generations():
        if req.path == "txt2img" and req.status == 200:
            answers[req.payload.get("seed")] = req.images[0]
    by_request: dict[str, str] = {}  # the request key of each output → its item
    for rel in sorted(made_g):
        png = server_root / "GENERATIONS" / rel
        data = png.read_bytes()
        try:
            seed = json.loads(png.with_suffix(".json").read_text())["seed"]
        except (OSError, ValueError, KeyError):
            run.partial.append(f"GENERATIONS/{rel}: no readable sidecar")
            continue
        if png_shape(data) or data != answers.get(seed):
            run.partial.append(f"GENERATIONS/{rel}: not the bytes the server sent")
        by_request[f"seed:{seed}"] = f"generate:{rel.removesuffix('_1.png')}"
        by_request["init:" + hashlib.sha256(data).hexdigest()] = f"upscale:{rel}"
    for rel in sorted(made_u):
        data = (server_root / "UPSCALED_IMAGES" / rel).read_bytes()
        if png_shape(data) or png_size(data) != (256, 256):
            run.partial.append(f"UPSCALED_IMAGES/{rel}: {png_shape(data) or png_size(data)}")
    calls: list[str] = server.calls  # type: ignore[attr-defined]
    recorded = server.state.generations()
    run.requests = Counter(r.path for r in recorded)
    run.failed_requests = sum(1 for r in recorded if r.status != 200)
    per_item = Counter(by_request.get(key, key) for key in calls)
    run.duplicates = {item: n for item, n in per_item.items() if n > 1}
    run.temp_files = sorted(
        p.relative_to(server_root).as_posix()
        for p in server_root.rglob("*")
        if parse_temp_name(p.name) or p.name.startswith(".fuse_hidden")
    )
    lines = events(work)
    for name in WATCHED:
        run.events[name] = Counter(e.get("host", "?") for e in lines if e.get("event") == name)
    seen: set[str] = set()
    for e in lines:  # the first line of each error-level event, for the report
        name = e.get("event", "")
        if e.get("level") in ("error", "warning") and name not in seen:
            seen.add(name)
            run.excerpts.append(json.dumps(e, ensure_ascii=False)[:600])
