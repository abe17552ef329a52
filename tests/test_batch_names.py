"""Names compared as the volume compares them, and the daemon's acceptance rules wherever a
file is checked (docs/protocol.md#prompts-files, #index-reservations).

- Two prompts files whose names differ only in case are two batches, each with its own plan
  and images; never one plan for both.
- An image at a planned name that this batch did not make is a failed item with a reason,
  never counted done.
- `emif enqueue`, `plan` and `validate` refuse what the daemon would refuse, with its words.
- A claim that cannot be made (name over 255 bytes, a folder in its place) fails that item
  alone; a PNG 1000 folders deep is upscaled like any other.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from emif_daemon.config.schema import load_config
from emif_daemon.intake.inbox import Inbox
from emif_daemon.intake.planning import Expansion
from emif_daemon.share.atomic import make_dirs
from emif_daemon.share.layout import Layout
from tests import sdapi_server
from tests.fake_images import make_png
from tests.helpers import log_lines, pipeline_config, pngs, run_emif


def job(nation: str, prompt: str, count: int = 2, category: str = "family") -> dict[str, Any]:
    return {"jobs": [{"nation": nation, "category": category, "prompt": prompt, "count": count}]}


def events(root: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in log_lines(root) if e.get("event") == name]


def once(cfg: Path, *stages: str) -> int:
    args = ["run", "--once", "--no-progress", "--config", str(cfg)]
    args += ["--stages", ",".join(stages)] if stages else []
    return run_emif(*args, timeout=300).returncode


def plans_of(root: Path) -> dict[str, list[tuple[int, int]]]:
    out = {}
    for path in (root / ".emif" / "jobs").glob("*.plan.json"):
        doc = json.loads(path.read_text())
        out[doc["source"]] = [(j["first"], j["count"]) for j in doc["jobs"]]
    return out


def made_by(root: Path, batch: str) -> list[str]:
    """The images whose sidecar says `batch` made them."""
    out = []
    for sidecar in (root / "GENERATIONS").rglob("*.json"):
        if json.loads(sidecar.read_text()).get("source") == batch:
            out.append(sidecar.with_suffix(".png").name)
    return sorted(out)


def test_x_json_and_x_JSON_are_two_batches_each_made_whole(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    """On a volume that tells them apart (this one), both files are accepted: the second
    gets a name of its own (x-2.JSON), a plan of its own, and every image it asked for. On a
    Mac's share the two names are one file, so only one can be dropped."""
    cfg = pipeline_config(root, sdapi.url, upscale=False)
    queue = root / "queue"
    (queue / "x.json").write_text(json.dumps(job("Norway", "a family at dinner")))
    (queue / "x.JSON").write_text(json.dumps(job("Norway", "a family outdoors")))
    assert once(cfg) == 0
    [renamed] = events(root, "prompts_renamed")  # whichever was taken second
    second = renamed["file"]
    assert renamed["accepted_as"] == "x-2" + second[1:]
    batches = sorted({"x.json", "x.JSON"} - {second} | {renamed["accepted_as"]})
    assert sorted(os.listdir(root / "queue" / "done")) == batches
    plans = plans_of(root)
    assert sorted(plans) == batches
    assert sorted(first for [(first, _n)] in plans.values()) == [1, 3]  # never the same names
    assert len(pngs(root / "GENERATIONS")) == 4
    for batch in batches:
        [done] = [e for e in events(root, "batch_done") if e["file"] == batch]
        assert (done["done"], done["failed"]) == (2, 0)
        assert len(made_by(root, batch)) == 2


def test_an_image_at_a_planned_name_made_from_another_file_fails_the_item(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    """A user's PNG (no sidecar) and another file's image sit where the plan puts two of
    this batch's images: the batch ends with 1 done and 2 failed, each failure saying whose
    image it is, and neither image is touched."""
    cfg = pipeline_config(root, sdapi.url, upscale=False)
    layout = Layout(root)
    (layout.queue / "mine.json").write_text(json.dumps(job("Peru", "a family", 3)))
    Inbox(layout, Expansion.of(load_config(cfg).generate), lambda _e, _d: None).take(
        layout.queue / "mine.json"
    )
    folder = root / "GENERATIONS" / "Peru" / "family"
    folder.mkdir(parents=True)
    users = make_png(128, 128, seed=1)
    (folder / "Peru_family_1_1.png").write_bytes(users)
    old = time.time() - 3600  # put there an hour ago: no sidecar is on its way
    os.utime(folder / "Peru_family_1_1.png", (old, old))
    (folder / "Peru_family_2_1.png").write_bytes(make_png(128, 128, seed=2))
    other = {"source": "other.json", "prompt": "a dog"}
    (folder / "Peru_family_2_1.json").write_text(json.dumps(other))
    assert once(cfg) == 1  # failures
    [done] = events(root, "batch_done")
    assert (done["items"], done["done"], done["failed"]) == (3, 1, 2)
    reasons = {f["item"]: f["reason"] for f in done["failures"]}
    assert "without a sidecar" in reasons["Peru/family/Peru_family_1"]
    assert "'other.json'" in reasons["Peru/family/Peru_family_2"]
    assert "'a dog'" in reasons["Peru/family/Peru_family_2"]
    assert (folder / "Peru_family_1_1.png").read_bytes() == users
    assert made_by(root, "mine.json") == ["Peru_family_3_1.png"]


def test_enqueue_plan_and_validate_refuse_what_the_daemon_would_with_its_words(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer, tmp_path: Path
) -> None:
    cfg = pipeline_config(root, sdapi.url, upscale=False)
    source = tmp_path / "f.json"
    source.write_text(json.dumps(job("Peru", "a family")))
    first = run_emif("enqueue", str(source), "--config", str(cfg))
    assert first.returncode == 0, first.stderr
    again = run_emif("enqueue", str(source), "--config", str(cfg))
    assert again.returncode == 1
    assert "the very same file is queued already as f.json" in again.stdout
    assert once(cfg) == 0
    # Accepted now: every command gives the daemon's own reason.
    twin = tmp_path / "g.json"
    twin.write_bytes(source.read_bytes())
    reason = "the very same file was accepted before as f.json"
    for command in ("enqueue", "plan", "validate"):
        said = run_emif(command, str(twin), "--config", str(cfg))
        assert said.returncode == 1, (command, said.stdout, said.stderr)
        assert reason in said.stdout, (command, said.stdout, said.stderr)
    assert run_emif("enqueue", str(twin), "--force", "--config", str(cfg)).returncode == 0
    once(cfg)
    problems = json.loads((root / "queue" / "rejected" / "g.error.json").read_text())["problems"]
    assert [reason in p for p in problems] == [True]
    # A spelling another file fixed: refused at enqueue, as the daemon would.
    peru = tmp_path / "peru.json"
    peru.write_text(json.dumps(job("PERU", "a family", 1)))
    said = run_emif("enqueue", str(peru), "--config", str(cfg))
    assert said.returncode == 1
    assert "'PERU' differs only in case" in said.stdout


def every_png(top: Path) -> list[str]:
    """PNGs under `top` at any depth (pathlib's rglob and Python 3.11's os.walk recurse)."""
    found, stack = [], [top]
    while stack:
        folder = stack.pop()
        for entry in os.scandir(folder):
            if entry.is_dir():
                stack.append(Path(entry.path))
            elif entry.name.endswith(".png"):
                found.append(Path(entry.path).relative_to(top).as_posix())
    return sorted(found)


def remove_tree(top: Path) -> None:
    """Remove `top` and all below it, at any depth, without recursion."""
    stack, folders = [top], []
    while stack:
        folder = stack.pop()
        folders.append(folder)
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                os.unlink(entry.path)
    for folder in reversed(folders):
        os.rmdir(folder)


def test_a_claim_that_cannot_be_made_fails_its_item_and_the_stage_goes_on(
    root: Path, sdapi: sdapi_server.SdapiHTTPServer
) -> None:
    """A valid 250-byte PNG name (its claim would be 256 bytes), and a PNG whose claim's
    place is taken by a folder: each fails with the reason; the other PNGs are upscaled,
    one of them 1000 folders deep."""
    cfg = pipeline_config(root, sdapi.url)
    folder = root / "GENERATIONS" / "Peru" / "family"
    folder.mkdir(parents=True)
    long = "L" * 246 + ".png"
    for name in (long, "blocked.png", "fine.png"):
        (folder / name).write_bytes(make_png(128, 128, seed=len(name)))
    claims = root / ".emif" / "claims" / "upscale" / "Peru" / "family"
    (claims / "blocked.png.claim").mkdir(parents=True)
    deep = root / "GENERATIONS" / Path(*["d"] * 1000)
    make_dirs(deep)  # pathlib's mkdir(parents=True) itself recurses once per level
    (deep / "deep.png").write_bytes(make_png(128, 128, seed=7))
    try:
        code = once(cfg, "upscale")
        made = every_png(root / "UPSCALED_IMAGES")
        failed = {e["item"]: e["reason"] for e in events(root, "item_failed")}
        stuck = events(root, "stage_error") + events(root, "claim_failed")
    finally:
        remove_tree(root)  # pytest's clean-up of old temp folders recurses too
    assert code == 1  # two failed items
    assert "Peru/family/fine_upscaled_1.png" in made
    assert any(p.endswith("deep_upscaled_1.png") for p in made)
    assert set(failed) == {f"Peru/family/{long}", "Peru/family/blocked.png"}
    assert all("its claim cannot be made" in r for r in failed.values())
    assert stuck == []
