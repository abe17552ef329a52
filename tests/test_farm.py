"""Operator controls on a shared root: pause / resume every host, and notifications."""

from __future__ import annotations

import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from emif_daemon.share.claims import read_claim
from tests import sdapi_server
from tests.helpers import (
    emif_cmd,
    fast_sections,
    free_port,
    log_lines,
    run_emif,
    spawn,
    toy_cmd,
    wait_for,
    write_config,
)


def working_claims(root: Path) -> dict[str, str]:
    """item → host of every claim still being worked on."""
    out = {}
    for path in (root / ".emif" / "claims" / "toy").glob("*.claim"):
        content = read_claim(path)
        if content and content["state"] == "working":
            out[path.stem] = content["host"]
    return out


def test_pause_stops_every_host_after_the_item_in_hand_and_resume_restarts(root: Path) -> None:
    (root / "inbox").mkdir()
    for i in range(12):
        (root / "inbox" / f"{i:03}.txt").write_text("x")
    cfgs = {
        h: write_config(root.parent / f"{h}.toml", fast_sections(root, coordination={"host_id": h}))
        for h in ("a", "b")
    }
    procs = [spawn(toy_cmd(c, "--work-s", "1.0")) for c in cfgs.values()]
    try:
        wait_for(lambda: set(working_claims(root).values()) == {"a", "b"}, timeout=30)
        in_hand = set(working_claims(root))
        assert (
            run_emif(
                "pause", "--reason", "checking the share", "--config", str(cfgs["a"])
            ).returncode
            == 0
        )
        # The items in hand complete; nothing new is claimed.
        wait_for(lambda: not working_claims(root), timeout=10)
        done = {p.stem for p in (root / "outbox").glob("*.out")}
        assert in_hand <= done
        claims_before = sorted(p.name for p in (root / ".emif" / "claims" / "toy").glob("*"))
        wait_for(lambda: sum(e["event"] == "paused" for e in log_lines(root)) == 2, timeout=10)
        threading.Event().wait(1.0)  # ten rescan intervals of 0.1 s: still nothing claimed
        assert (
            sorted(p.name for p in (root / ".emif" / "claims" / "toy").glob("*")) == claims_before
        )
        status = json.loads(run_emif("status", "--json", "--config", str(cfgs["b"])).stdout)
        assert status["paused"]["reason"] == "checking the share"
        assert status["paused"]["host"] == "a"
        assert run_emif("resume", "--config", str(cfgs["b"])).returncode == 0
        wait_for(lambda: len(list((root / "outbox").glob("*.out"))) == 12, timeout=60)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(15) == 0
    events = log_lines(root)
    for host in ("a", "b"):
        mine = [e["event"] for e in events if e.get("host") == host]
        assert mine.count("paused") == 1
        assert mine.count("resumed") == 1
    paused = [e for e in events if e["event"] == "paused"]
    assert all(e["reason"] == "checking the share" for e in paused)


def test_run_paused_starts_a_host_paused(root: Path) -> None:
    (root / "inbox").mkdir()
    (root / "inbox" / "000.txt").write_text("x")
    cfg = write_config(root.parent / "c.toml", fast_sections(root, coordination={"host_id": "h"}))
    proc = spawn([*emif_cmd("run", "--paused", "--config", str(cfg))])
    try:
        wait_for(lambda: any(e["event"] == "paused" for e in log_lines(root)), timeout=30)
        status = run_emif("status", "--config", str(cfg)).stdout
        assert "h is paused on its own" in status
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


class Receiver:
    """A webhook receiver on loopback that records every JSON document it gets."""

    def __init__(self, port: int = 0) -> None:
        self.docs: list[dict[str, Any]] = []
        docs = self.docs

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                docs.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["event"] == name]


def notify_config(root: Path, sd_url: str, hook: str) -> Path:
    sections = fast_sections(
        root, server={"url": sd_url, "backoff_s": 0.05}, notify={"webhook_url": hook}
    )
    extra = "[generate.payload]\nwidth = 128\nheight = 128\n[upscale]\nenabled = false\n"
    return write_config(root.parent / "c.toml", sections, extra)


def two_batches(root: Path) -> None:
    (root / "queue").mkdir(exist_ok=True)
    good = {"jobs": [{"nation": "A", "category": "c", "prompt": "p", "count": 3}]}
    mixed = {
        "jobs": [
            {"nation": "B", "category": "c", "prompt": "p", "count": 2},
            {"nation": "B", "category": "x", "prompt": "p", "payload": {"bogus": 1}},
        ]
    }
    (root / "queue" / "good.json").write_text(json.dumps(good))
    (root / "queue" / "mixed.json").write_text(json.dumps(mixed))


def test_webhook_gets_one_batch_done_per_file_and_one_item_failed_per_failure(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    receiver = Receiver()
    try:
        two_batches(root)
        cfg = notify_config(root, sdapi.url, receiver.url)
        assert run_emif("run", "--once", "--config", str(cfg)).returncode == 1
        wait_for(lambda: len(receiver.events("batch_done")) == 2, timeout=10)
    finally:
        receiver.close()
    batches = {d["file"]: d for d in receiver.events("batch_done")}
    assert (batches["good.json"]["done"], batches["good.json"]["failed"]) == (3, 0)
    assert (batches["mixed.json"]["done"], batches["mixed.json"]["failed"]) == (2, 1)
    failure = batches["mixed.json"]["failures"][0]
    assert failure["item"] == "B/x/B_x_1"
    assert "Unrecognized keys" in failure["reason"]
    failed = receiver.events("item_failed")
    assert len(failed) == 1
    assert failed[0]["item"] == "B/x/B_x_1"
    for doc in receiver.docs:
        assert doc["root"] == str(root)
        assert doc["host"]


def test_a_receiver_that_is_down_does_not_slow_the_stages_and_gets_events_later(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    port = free_port()
    two_batches(root)
    cfg = notify_config(root, sdapi.url, f"http://127.0.0.1:{port}/hook")
    proc = spawn(emif_cmd("run", "--config", str(cfg)))
    receiver = None
    try:
        # Both batches finish while nobody listens: the stages are not held up.
        wait_for(lambda: len(list((root / "queue" / "done").glob("*.json"))) == 2, timeout=30)
        wait_for(lambda: any(e["event"] == "notify_retry" for e in log_lines(root)), timeout=10)
        receiver = Receiver(port)
        wait_for(lambda: len(receiver.events("batch_done")) == 2, timeout=40)
        wait_for(lambda: len(receiver.events("item_failed")) == 1, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        if receiver is not None:
            receiver.close()
    assert len(receiver.events("batch_done")) == 2  # once each, no duplicates
