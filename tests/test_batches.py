"""A failed batch can be fixed, a batch can be cancelled, a file can be planned dry."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests import sdapi_server
from tests.helpers import (
    emif_cmd,
    free_port,
    log_lines,
    pipeline_config,
    pngs,
    run_emif,
    serving,
    spawn,
    wait_for,
)


def batch(payload: dict[str, Any], count: int = 2) -> dict[str, Any]:
    job = {"nation": "Peru", "category": "family", "prompt": "a family", "count": count}
    return {"defaults": {"seed": 5, "payload": payload}, "jobs": [job]}


def sent_steps(server: sdapi_server.SdapiHTTPServer) -> list[Any]:
    return [r.payload.get("steps") for r in server.state.generations() if r.status == 200]


@pytest.mark.parametrize("how", ["re-enqueued", "retry --file"])
def test_a_batch_that_failed_on_a_payload_mistake_is_fixed_with_the_corrected_file(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer, tmp_path: Path, how: str
) -> None:
    cfg = pipeline_config(root, sdapi.url, upscale=False)
    (root / "queue" / "b.json").write_text(json.dumps(batch({"no_such_key": 1})))
    assert run_emif("run", "--once", "--config", str(cfg)).returncode == 1
    assert pngs(root / "GENERATIONS") == []
    failed = [e for e in log_lines(root) if e["event"] == "item_failed"]
    assert len(failed) == 2
    corrected = json.dumps(batch({"steps": 3}))
    if how == "re-enqueued":
        (root / "queue" / "b.json").write_text(corrected)
    else:
        fixed = tmp_path / "b.json"
        fixed.write_text(corrected)
        result = run_emif("retry", "--file", str(fixed), "--config", str(cfg))
        assert result.returncode == 0, result.stderr
        assert "2 failed item(s) pending again" in result.stdout
    assert run_emif("run", "--once", "--config", str(cfg)).returncode == 0
    assert pngs(root / "GENERATIONS") == [
        "Peru/family/Peru_family_1_1.png",  # the same names: a fix, not new images
        "Peru/family/Peru_family_2_1.png",
    ]
    assert sent_steps(sdapi) == [3, 3]  # made with the corrected payload
    sidecar = json.loads((root / "GENERATIONS/Peru/family/Peru_family_1_1.json").read_text())
    assert sidecar["payload"]["steps"] == 3
    assert json.loads((root / "queue" / "done" / "b.json").read_text()) == json.loads(corrected)


def test_a_fix_that_changes_the_jobs_is_refused_naming_why(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    cfg = pipeline_config(root, sdapi.url, upscale=False)
    (root / "queue" / "b.json").write_text(json.dumps(batch({"no_such_key": 1})))
    assert run_emif("run", "--once", "--config", str(cfg)).returncode == 1
    (root / "queue" / "b.json").write_text(json.dumps(batch({"steps": 3}, count=5)))
    assert run_emif("run", "--once", "--config", str(cfg)).returncode == 1
    report = json.loads((root / "queue" / "rejected" / "b.error.json").read_text())
    assert report["problems"] == [
        "jobs[0]: was Peru/family × 2 in b.json, now Peru/family × 5; a fix keeps each "
        "job's nation, category and count"
    ]
    assert pngs(root / "GENERATIONS") == []


def test_cancel_during_a_run_of_two_daemons_stops_new_claims_and_the_other_goes_on(
    root: Path, tmp_path: Path
) -> None:
    with serving("drawthings", latency=0.3) as server:
        cfgs = []
        for host in ("a", "b"):
            cfg = pipeline_config(root, server.url, upscale=False)
            text = cfg.read_text().replace(
                "[coordination]\n", f'[coordination]\nhost_id = "{host}"\n'
            )
            path = tmp_path / f"{host}.toml"
            path.write_text(text)
            cfgs.append(path)
        doc = {
            "defaults": {"seed": 1},
            "jobs": [{"nation": "Peru", "category": "family", "prompt": "p", "count": 12}],
        }
        other = {
            "defaults": {"seed": 1},
            "jobs": [{"nation": "Chile", "category": "family", "prompt": "p", "count": 4}],
        }
        (root / "queue" / "big.json").write_text(json.dumps(doc))
        procs = [spawn(emif_cmd("run", "--config", str(c))) for c in cfgs]
        try:
            wait_for(lambda: len(server.state.generations()) >= 2, 60)
            result = run_emif("cancel", "big.json", "--config", str(cfgs[0]))
            assert result.returncode == 0, result.stderr
            cancelled_at = time.time()
            (root / "queue" / "other.json").write_text(json.dumps(other))
            wait_for((root / "queue" / "done" / "other.json").exists, 60)
            status = json.loads(run_emif("status", "--json", "--config", str(cfgs[0])).stdout)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            assert [p.wait(30) for p in procs] == [0, 0]
    claims = [
        e
        for e in log_lines(root)
        if e["event"] == "item_claimed" and e.get("item", "").startswith("Peru/")
    ]
    late = [e for e in claims if _epoch(e["timestamp"]) > cancelled_at + 0.5]
    assert late == [], "a host claimed an item of the cancelled batch"
    assert len(pngs(root / "GENERATIONS" / "Peru")) < 12
    assert len(pngs(root / "GENERATIONS" / "Chile")) == 4
    assert (root / "queue" / "cancelled" / "big.json").exists()
    assert status["queue"]["cancelled"] == 1
    assert status["stages"]["generate"]["pending"] == 0


def _epoch(iso: str) -> float:

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_plan_shows_names_seeds_and_what_exists_without_writing(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer, tmp_path: Path
) -> None:
    cfg = pipeline_config(root, sdapi.url, upscale=False)
    folder = root / "GENERATIONS" / "Peru" / "family"
    folder.mkdir(parents=True)
    (folder / "Peru_family_1_1.png").write_bytes(b"made before")
    path = tmp_path / "new.json"
    path.write_text(json.dumps(batch({"steps": 3})))
    before = sorted(p for p in root.rglob("*"))
    result = run_emif("plan", str(path), "--json", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [i["outputs"] for i in shown["items"]] == [
        ["Peru/family/Peru_family_2_1.png"],
        ["Peru/family/Peru_family_3_1.png"],
    ]
    assert [i["seed"] for i in shown["items"]] == [6, 7]
    assert shown["items"][0]["payload"]["steps"] == 3
    assert sorted(p for p in root.rglob("*")) == before


def test_a_batch_through_every_stage_is_summed_up_once(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    cfg = pipeline_config(root, sdapi.url, upscale=True)
    doc = {
        "defaults": {"seed": 1},
        "jobs": [{"nation": "Peru", "category": "family", "prompt": "p", "count": 2}],
    }
    (root / "queue" / "s.json").write_text(json.dumps(doc))
    assert run_emif("run", "--once", "--config", str(cfg)).returncode == 0
    [summary] = [e for e in log_lines(root) if e["event"] == "batch_complete"]
    assert summary["file"] == "s.json"
    assert summary["stages"] == {
        "generate": {"done": 2, "failed": 0},
        "upscale": {"done": 2, "failed": 0},
    }
    assert summary["failures"] == []
    assert summary["outputs"] == ["Peru/family"]
    assert (root / ".emif" / "jobs" / "s.complete.json").exists()
    # A later run says nothing more about it.
    assert run_emif("run", "--once", "--config", str(cfg)).returncode == 0
    assert [e["event"] for e in log_lines(root)].count("batch_complete") == 1


def test_once_gives_up_on_a_server_that_never_answers_with_its_own_exit_code(
    root: Path,
) -> None:

    cfg = pipeline_config(root, f"http://127.0.0.1:{free_port()}", upscale=False)
    cfg.write_text(cfg.read_text().replace("[server]\n", "[server]\nonce_wait_s = 1.5\n"))
    (root / "queue" / "b.json").write_text(json.dumps(batch({"steps": 3}, count=1)))
    started = time.monotonic()
    result = run_emif("run", "--once", "--config", str(cfg))
    assert result.returncode == 3, result.stderr[-2000:]
    assert time.monotonic() - started < 30
    [gave_up] = [e for e in log_lines(root) if e["event"] == "server_wait_gave_up"]
    assert gave_up["waited_s"] == 1.5
    [stopped] = [e for e in log_lines(root) if e["event"] == "daemon_stopped"]
    assert stopped["exit_code"] == 3
    assert [e for e in log_lines(root) if e["event"] == "item_failed"] == []  # no attempt
