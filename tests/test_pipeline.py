"""Generate and upscale end to end over real HTTP, with a real daemon process."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests import sdapi_server
from tests.helpers import (
    REPO,
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


def nations_file(path: Path, nations: list[str], per: int = 4, seed: int | None = 7) -> Path:
    jobs = [
        {"nation": n, "category": c, "prompt": f"a {c} in {n}", "count": per}
        for n in nations
        for c in ("family", "working")
    ]
    doc: dict[str, Any] = {"name": "test", "jobs": jobs}
    if seed is not None:
        doc["defaults"] = {"seed": seed}
    path.write_text(json.dumps(doc))
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_dropped_file_becomes_24_generations_and_24_upscales(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    cfg = pipeline_config(root, sdapi.url)
    proc = spawn(emif_cmd("run", "--config", str(cfg)))
    try:
        wait_for((root / "queue" / "accepted").is_dir, timeout=30)
        source = nations_file(root.parent / "nations.json", ["Italy", "Japan", "Perú"])
        assert run_emif("enqueue", str(source), "--config", str(cfg)).returncode == 0
        wait_for(lambda: len(pngs(root / "UPSCALED_IMAGES")) == 24, timeout=90)
        wait_for((root / "queue" / "done" / "nations.json").exists, timeout=30)
        assert proc.poll() is None, "the daemon exited on its own"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    expected = [
        f"{n}/{c}/{n}_{c}_{i}_1.png"
        for n in ("Italy", "Japan", "Perú")
        for c in ("family", "working")
        for i in range(1, 5)
    ]
    assert pngs(root / "GENERATIONS") == sorted(expected)
    assert pngs(root / "UPSCALED_IMAGES") == sorted(
        e.replace("_1.png", "_1_upscaled_1.png") for e in expected
    )
    requests = [r for r in sdapi.state.generations() if r.status == 200]
    txt = [r for r in requests if r.path == "txt2img"]
    img = [r for r in requests if r.path == "img2img"]
    assert len(txt) == 24
    assert len(img) == 48  # two passes each
    sent_by_seed = {r.payload["seed"]: r.images[0] for r in txt}
    final_answers = {sha(r.images[0]) for r in img if r.payload.get("strength") == 0.3}
    for rel in expected:
        png = root / "GENERATIONS" / rel
        side = json.loads(png.with_suffix(".json").read_text())
        assert png.read_bytes() == sent_by_seed[side["seed"]], "bytes differ from the answer"
        assert side["payload"]["seed"] == side["seed"]
        assert side["output_sha256"] == sha(png.read_bytes())
        index = int(rel.rsplit("_", 2)[1])
        assert side["seed"] == 7 + index - 1
        up = root / "UPSCALED_IMAGES" / rel.replace("_1.png", "_1_upscaled_1.png")
        assert sha(up.read_bytes()) in final_answers
        up_side = json.loads(up.with_suffix(".json").read_text())
        assert up_side["source_sha256"] == sha(png.read_bytes())
        assert len(up_side["passes"]) == 2
        assert "init_images" not in json.dumps(up_side)
    # init images were sent as plain base64 with width/height equal to their size
    first_pass = [r for r in img if r.payload.get("strength") == 0.0]
    assert {(r.payload["width"], r.payload["height"]) for r in first_pass} == {(128, 128)}
    events = [e["event"] for e in log_lines(root)]
    assert "server_detected" in events
    assert events.count("prompts_accepted") == 1
    assert events.count("batch_done") == 1


def test_legacy_shape_and_a_second_run_of_the_same_file_sends_nothing(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    cfg = pipeline_config(root, sdapi.url, upscale=False)
    legacy = [
        {"language": "Italy", "prompt_addition": "a working italian man in a workshop"},
        {"language": "Italy", "prompt_addition": "an italian family at dinner", "count": 2},
        {"language": "Italy", "prompt_addition": "a working italian woman at a loom"},
    ]
    (root / "queue").mkdir(exist_ok=True)
    (root / "queue" / "legacy.json").write_text(json.dumps(legacy))
    assert run_emif("run", "--once", "--config", str(cfg)).returncode == 0
    assert pngs(root / "GENERATIONS") == [
        "Italy/family/Italy_family_1_1.png",
        "Italy/family/Italy_family_2_1.png",
        "Italy/working/Italy_working_1_1.png",
        "Italy/working/Italy_working_2_1.png",
    ]
    before = {p: p.read_bytes() for p in (root / "GENERATIONS").rglob("*.png")}
    sent = len(sdapi.state.generations())
    (root / "queue" / "legacy.json").write_text(json.dumps(legacy))
    assert run_emif("run", "--once", "--config", str(cfg)).returncode == 0
    assert len(sdapi.state.generations()) == sent, "a second run sent requests"
    assert {p: p.read_bytes() for p in (root / "GENERATIONS").rglob("*.png")} == before
    # Recognised and said, not counted "done" (it would make nothing new).
    assert (root / "queue" / "rejected" / "legacy-2.json").exists()
    rejected = [e for e in log_lines(root) if e["event"] == "prompts_rejected"]
    assert "the very same file was accepted before as legacy.json" in rejected[-1]["errors"][0]


INVALID = {
    "truncated.json": b'{"jobs": [{"nation": "Italy", "categ',
    "dotdot.json": b'{"jobs": [{"nation": "../etc", "category": "c", "prompt": "p"}]}',
    "negative.json": b'{"jobs": [{"nation": "N", "category": "c", "prompt": "p", "count": -2}]}',
    "noprompt.json": b'{"jobs": [{"nation": "N", "category": "c"}]}',
    "legacy.json": b'[{"language": "Italy", "prompt_addition": "an italian man"}]',
    "empty.json": b"",
}
REASONS = {
    "truncated.json": "$: not valid JSON",
    "dotdot.json": "jobs[0].nation: contains '/'",
    "negative.json": "jobs[0].count: expected an integer 1…10000, got -2",
    "noprompt.json": "jobs[0].prompt: required",
    "legacy.json": "[0].prompt_addition: contains neither",
    "empty.json": "$: the file is empty",
}


def test_invalid_files_are_rejected_with_reasons_while_a_valid_one_completes(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    cfg = pipeline_config(root, sdapi.url, upscale=False)
    (root / "queue").mkdir(exist_ok=True)
    for name, data in INVALID.items():
        (root / "queue" / name).write_bytes(data)
    nations_file(root / "queue" / "good.json", ["Chile"], per=2)
    assert run_emif("run", "--once", "--config", str(cfg)).returncode == 0
    assert len(pngs(root / "GENERATIONS")) == 4
    assert (root / "queue" / "done" / "good.json").exists()
    for name, data in INVALID.items():
        moved = root / "queue" / "rejected" / name
        assert moved.read_bytes() == data, "a rejected file lost its content"
        error = json.loads((root / "queue" / "rejected" / (moved.stem + ".error.json")).read_text())
        assert any(p.startswith(REASONS[name]) for p in error["problems"]), error
    rejected = [e for e in log_lines(root) if e["event"] == "prompts_rejected"]
    assert sorted(e["file"] for e in rejected) == sorted(INVALID)
    assert run_emif("validate", str(root / "queue" / "rejected" / "dotdot.json")).returncode == 1
    assert run_emif("validate", str(root / "queue" / "done" / "good.json")).returncode == 0


def test_server_faults_end_every_item_done_or_failed_with_a_reason(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    cfg = pipeline_config(root, sdapi.url, upscale=False)
    # item 1: 500, garbage base64, then fine; item 2: PNG that does not decode, dropped
    # connection, then fine; item 3: three 500s → failed; item 4: an empty answer then fine.
    # (Faults by seed: the stage's two workers may ask in either order.)
    for seed, faults in {1: ("500", "garbage"), 2: ("badpng", "drop"), 3: ("500",) * 3}.items():
        sdapi.state.fault(*faults, seed=seed)
    sdapi.state.fault("empty", seed=4)
    doc = {
        "defaults": {"seed": 1},
        "jobs": [
            {"nation": "N", "category": "c", "prompt": "p", "count": 4},
            {"nation": "N", "category": "bad", "prompt": "p", "payload": {"foo": 1}},
        ],
    }
    (root / "queue").mkdir(exist_ok=True)
    (root / "queue" / "faults.json").write_text(json.dumps(doc))
    result = run_emif("run", "--once", "--config", str(cfg))
    assert result.returncode == 1  # some items failed
    made = pngs(root / "GENERATIONS")
    failed = {
        p.relative_to(root / ".emif" / "failed" / "generate").as_posix(): json.loads(p.read_text())
        for p in (root / ".emif" / "failed" / "generate").rglob("*.json")
    }
    assert len(made) + len(failed) == 5
    assert "N/c/N_c_3.json" in failed
    assert "HTTP 500" in failed["N/c/N_c_3.json"]["reason"]
    assert failed["N/c/N_c_3.json"]["attempts"] == 3
    assert "Unrecognized keys" in failed["N/bad/N_bad_1.json"]["reason"]
    assert failed["N/bad/N_bad_1.json"]["attempts"] == 1  # 4xx fails at once
    for rel in made:
        data = (root / "GENERATIONS" / rel).read_bytes()
        assert data.startswith(b"\x89PNG")
    assert (root / "queue" / "done" / "faults.json").exists()
    retries = [e for e in log_lines(root) if e["event"] == "item_retry"]
    assert {e["item"] for e in retries} >= {"N/c/N_c_1", "N/c/N_c_2", "N/c/N_c_3"}
    # emif retry makes them pending again and the file returns to accepted
    assert run_emif("retry", "--config", str(cfg)).returncode == 0
    assert (root / "queue" / "accepted" / "faults.json").exists()
    assert run_emif("run", "--once", "--config", str(cfg)).returncode == 1  # bad payload again
    assert "N/c/N_c_3_1.png" in pngs(root / "GENERATIONS")


def test_a_server_down_at_start_charges_no_attempt_and_is_waited_for(root: Path) -> None:
    port = free_port()
    cfg = pipeline_config(root, f"http://127.0.0.1:{port}", upscale=False)
    (root / "queue").mkdir(exist_ok=True)
    nations_file(root / "queue" / "n.json", ["Peru"], per=2)
    proc = spawn(emif_cmd("run", "--once", "--config", str(cfg)))
    try:
        wait_for(
            lambda: any(e["event"] == "server_unreachable" for e in log_lines(root)), timeout=30
        )
        time.sleep(30)  # the outage: the daemon must neither exit nor charge attempts
        assert proc.poll() is None
        with serving(port=port):
            assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(pngs(root / "GENERATIONS")) == 4
    events = [e["event"] for e in log_lines(root)]
    assert events.count("server_unreachable") == 1
    assert events.count("server_back") == 1
    assert "item_retry" not in events
    assert "item_failed" not in events
    assert not list((root / ".emif" / "broken").rglob("*"))


@pytest.mark.parametrize(
    ("mode", "config_name"), [("drawthings", "config.toml"), ("a1111", "examples/a1111.toml")]
)
def test_shipped_payloads_are_accepted_by_the_server_they_are_for(
    tmp_path: Path, mode: str, config_name: str
) -> None:
    with serving(mode) as server:
        work = tmp_path / "shipped"
        shutil.copytree(REPO / "recipes", work / "recipes")
        (work / "examples").mkdir()
        text = (REPO / config_name).read_text()
        text = text.replace("http://127.0.0.1:7860", server.url)
        text = text.replace('root = "../pipeline"', 'root = "pipeline"')
        if "[segment]\nenabled = true" in text:
            text = text.replace("[segment]\nenabled = true", "[segment]\nenabled = false")
        else:
            text = text.replace("[segment]\n", "[segment]\nenabled = false\n", 1)
        text = text.replace('mode = "auto"', 'mode = "poll"').replace(
            "settle_s = 2 ", "settle_s = 0 "
        )
        cfg = work / config_name
        cfg.write_text(text)
        root = cfg.parent / "pipeline"
        assert run_emif("init", "--config", str(cfg)).returncode == 0
        nations_file(root / "queue" / "one.json", ["Italy"], per=1)
        result = run_emif("run", "--once", "--config", str(cfg), timeout=180)
        assert result.returncode == 0, result.stderr[-2000:]
        statuses = [r.status for r in server.state.generations()]
        assert statuses == [200] * 6  # 2 txt2img + 2 × 2 img2img passes
        ups = sorted((root / "UPSCALED_IMAGES").rglob("*.png"))
        assert len(ups) == 2
        assert ups[0].read_bytes()[16:24] == (2048).to_bytes(4, "big") * 2


def test_retry_returns_the_right_file_when_a_name_was_used_before(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    """A batch keeps one name from accepted/ to done/, so retry finds the right one."""
    cfg = pipeline_config(root, sdapi.url, upscale=False)
    (root / "queue").mkdir(exist_ok=True)
    first = {"jobs": [{"nation": "N", "category": "c", "prompt": "p", "count": 1}]}
    (root / "queue" / "p.json").write_text(json.dumps(first))
    assert run_emif("run", "--once", "--config", str(cfg)).returncode == 0
    second = {"jobs": [{"nation": "M", "category": "c", "prompt": "p", "payload": {"x": 1}}]}
    (root / "queue" / "p.json").write_text(json.dumps(second))
    assert run_emif("run", "--once", "--config", str(cfg)).returncode == 1
    done = root / "queue" / "done"
    assert json.loads((done / "p.json").read_text()) == first
    assert json.loads((done / "p-2.json").read_text()) == second
    assert run_emif("retry", "--config", str(cfg)).returncode == 0
    assert (root / "queue" / "accepted" / "p-2.json").exists()
    assert (done / "p.json").exists()
