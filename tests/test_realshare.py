"""The farm on shares as they really are: a real SMB share (Samba on loopback, one smbnetfs
mount per host, tests/realshare/) and the Mac-like layer (tests/maclike.py: NFD listings,
case-insensitive lookups, no native no-replace rename, cached listings).

The guarantees are those of docs/protocol.md#guarantees; the real share must also not be blamed
for a client that died: a run whose SMB mount died or hung says so (xfail), apart from a run
where the daemon broke a guarantee (fail).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import subprocess
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import sdapi_server
from tests.helpers import (
    emif_cmd,
    fast_sections,
    run_emif,
    serving,
    spawn,
    wait_for,
    write_config,
)
from tests.intake_farm import intake_trials
from tests.maclike import MacLikeMount
from tests.realshare import RealShare
from tests.realshare.farm import events, init_root, pngs, run_farm

COTE = "Côte d'Ivoire"
MEXICO = "México"
_LIBC = ctypes.CDLL(None, use_errno=True)


# -- the real SMB share -------------------------------------------------------------------------


def shared_folder(share: RealShare, name: str) -> dict[str, Path]:
    """A new folder on the share, as each client mounts it once all of them see it."""
    share.heal()  # remount a client that died in an earlier test
    top = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
    (share.root(share.clients[0]) / top).mkdir()
    wait_for(lambda: all((share.root(c) / top).is_dir() for c in share.clients), 30)
    return {c: share.root(c) / top for c in share.clients}


def test_each_smb_mount_is_a_client_that_keeps_the_servers_guarantees(
    real_share: RealShare,
) -> None:
    """What the farm tests rest on: an exclusive create across mounts has one winner, names
    are listed decomposed and stored as sent, case twins are one name, no native no-replace
    rename."""
    dirs = shared_folder(real_share, "client")
    a, b, c = (dirs[n] for n in real_share.clients)
    rounds = 20
    barrier = threading.Barrier(3)
    won: list[tuple[int, str]] = []

    def race(folder: Path) -> None:
        for i in range(rounds):
            barrier.wait(timeout=30)
            try:
                os.close(os.open(folder / f"claim-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                won.append((i, folder.parent.name))
            except FileExistsError:
                pass

    threads = [threading.Thread(target=race, args=(d,)) for d in (a, b, c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(i for i, _ in won) == list(range(rounds)), f"winners per round: {won}"
    (a / COTE).mkdir()
    wait_for(lambda: unicodedata.normalize("NFD", COTE) in os.listdir(b), timeout=30)
    assert COTE in os.listdir(real_share.server_dir / a.name)
    with pytest.raises(FileExistsError):
        (c / COTE.upper()).mkdir()
    (a / "src").write_text("s")
    rc = _LIBC.renameat2(-100, bytes(a / "src"), -100, bytes(a / "dst"), 1)
    assert (rc, ctypes.get_errno()) == (-1, errno.EINVAL)


@pytest.mark.timeout(600)
def test_three_daemons_on_three_smb_mounts_survive_a_sigkill(
    real_share: RealShare, tmp_path: Path
) -> None:
    """60 images through generate and upscale by three daemons, each on its own SMB mount of
    one share; one is SIGKILLed mid-run and restarted. The results are read on the server."""
    roots = shared_folder(real_share, "farm")
    run = run_farm(
        roots,
        real_share.server_dir / roots["a"].name,
        tmp_path / "work",
        images=60,
        kill="b",
        mount_problems=real_share.mount_problems,
    )
    report = run.summary() + "\n" + "\n".join(run.excerpts)
    problems = run.failures(60)
    if problems and run.dead_mounts:
        logs = {c: real_share.client_log(c, 600) for c in run.dead_mounts}
        pytest.xfail(
            f"the SMB client failed, not (only) the daemon: mounts {run.dead_mounts}; "
            f"smbnetfs logs {logs}; then: {problems}; {report}"
        )
    assert not problems, "\n".join(problems) + "\n\n" + report


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("hosts", [2, 3])
def test_files_enqueued_at_once_through_several_smb_hosts_never_share_an_index(
    real_share: RealShare, tmp_path: Path, hosts: int
) -> None:
    """Issue 20's farm: one file for Norway/family per host, enqueued at once through each
    host's own SMB mount, 10 trials with the mounts' listing caches as configured (a Mac's,
    with the harness's Mac-faithful defaults): no index planned twice, every image asked for
    on the server once and made by its own batch, every `batch_done` as the server shows."""
    dirs = shared_folder(real_share, f"intake{hosts}")
    roots = {c: dirs[c] for c in real_share.clients[:hosts]}
    with serving("drawthings", latency=0.05) as sd:
        run = intake_trials(
            roots,
            real_share.server_dir / dirs["a"].name,
            tmp_path / "work",
            sd.url,
            trials=10,
            # the daemons re-list a changed folder as long as the client may cache it: a
            # Mac's listing cache is 30-60 s, the harness's own setting where it has one
            listing_s=float(getattr(real_share, "dir_cache_s", 60.0)),
        )
    problems = run.failures()
    dead = real_share.mount_problems()
    if problems and dead:
        pytest.xfail(f"the SMB client failed, not (only) the daemon: {dead}; {problems}")
    assert not problems, run.summary() + "\n" + "\n".join(problems)


# -- the Mac-like layer -------------------------------------------------------------------------


@pytest.fixture
def mac_share(fuse_ok: None, tmp_path: Path) -> Iterator[MacLikeMount]:
    """A share as a Mac mounts it: `source` is the server's folder, `mountpoint` the Mac's
    /Volumes/farm; listings cached 2 s."""
    (tmp_path / "server").mkdir()
    mount = MacLikeMount(tmp_path / "server", tmp_path / "Volumes" / "farm", dir_cache_s=2.0)
    with mount:
        yield mount


def mac_config(root: Path, work: Path, url: str, host: str = "mac") -> Path:
    work.mkdir(parents=True, exist_ok=True)
    sections = fast_sections(
        root,
        server={"url": url, "backoff_s": 0.05},
        # the layer's caches: attributes 1 s (kernel), listings 2 s at most
        coordination={
            "host_id": host,
            "heartbeat_s": 0.5,
            "lease_s": 30.0,
            "attribute_cache_s": 1.0,
        },
        logging={"file": f"logs/{host}.jsonl"},  # on the Mac's own disk
        watch={"rescan_interval_s": 0.2, "listing_cache_s": 2.0},
    )
    extra = "[generate.payload]\nwidth = 128\nheight = 128\nsteps = 4\n"
    extra += "[upscale]\nexpect_size = [256, 256]\n[[upscale.passes]]\n"
    extra += 'upscaler = "4x_ultrasharp_f16.ckpt"\nupscaler_scale = 2\nstrength = 0.0\n'
    return write_config(work / f"{host}.toml", sections, extra)


def log_excerpt(work: Path, lines: int = 25) -> str:
    shown = [json.dumps(e, ensure_ascii=False)[:400] for e in events(work)[-lines:]]
    stderr = "".join(p.read_text(errors="replace")[-1500:] for p in work.glob("*.stderr"))
    return "\n".join(shown) + ("\nstderr: " + stderr if stderr.strip() else "")


def count(work: Path, event: str) -> int:
    return sum(1 for e in events(work) if e.get("event") == event)


def wait_logged(work: Path, what: Callable[[], Any], timeout: float, doing: str) -> None:
    try:
        wait_for(what, timeout=timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(f"{doing}: not within {timeout} s\n{log_excerpt(work)}") from None


def run_once(cfg: Path, work: Path, timeout: float = 90) -> int:
    """`emif run --once`; a run that does not finish is killed and reported with its log."""
    proc = spawn(
        emif_cmd("run", "--once", "--no-progress", "--config", str(cfg)),
        stderr_to=work / "once.stderr",
    )
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(
            f"emif run --once did not finish within {timeout} s (a batch that never "
            f"finishes, or a loop over one item)\n{log_excerpt(work)}"
        ) from None


def enqueue(cfg: Path, work: Path, name: str, doc: dict[str, Any], force: bool = False) -> None:
    source = work / name
    source.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    args = ["enqueue", str(source), "--config", str(cfg), *(["--force"] if force else [])]
    result = run_emif(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def ready(mount: MacLikeMount, cfg: Path) -> None:
    """`emif init` the share (a daemon that has no such command builds the tree itself)."""
    said = init_root(mount.mountpoint, cfg)
    assert said in ("", "no init"), said


def all_names(top: Path) -> list[str]:
    return [p.name for p in top.rglob("*")]


def test_accented_batch_finishes_and_a_failed_accented_item_blocks_nothing(
    mac_share: MacLikeMount, sdapi: sdapi_server.SdapiHTTPServer, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    cfg = mac_config(mac_share.mountpoint, work, sdapi.url)
    ready(mac_share, cfg)
    doc = {
        "jobs": [  # the failing accented item first: the items after it must still be made
            {"nation": COTE, "category": "bad", "prompt": "a refused thing", "payload": {"x": 1}},
            {"nation": COTE, "category": "family", "prompt": "a family", "count": 2},
            {"nation": MEXICO, "category": "working", "prompt": "a worker", "count": 2},
            {"nation": "Norway", "category": "family", "prompt": "a family", "count": 1},
        ]
    }
    enqueue(cfg, work, "accents.json", doc)
    assert run_once(cfg, work) == 1  # one item failed
    server = mac_share.source
    assert (server / "queue" / "done" / "accents.json").exists(), log_excerpt(work)
    made = [(COTE, "family", 1), (COTE, "family", 2), (MEXICO, "working", 1)]
    made += [(MEXICO, "working", 2), ("Norway", "family", 1)]
    gens = {f"{n}/{c}/{n}_{c}_{i}_1.png" for n, c, i in made}
    assert pngs(server / "GENERATIONS") == gens
    assert pngs(server / "UPSCALED_IMAGES") == {
        g.replace("_1.png", "_1_upscaled_1.png") for g in gens
    }
    # names on the server stay as the user wrote them (NFC), and only once
    names = all_names(server / "GENERATIONS") + all_names(server / "UPSCALED_IMAGES")
    assert all(unicodedata.is_normalized("NFC", n) for n in names), names
    failed = [
        unicodedata.normalize("NFC", p.relative_to(server / ".emif/failed/generate").as_posix())
        for p in (server / ".emif" / "failed" / "generate").rglob("*.json")
    ]
    assert failed == [f"{COTE}/bad/{COTE}_bad_1.json"]
    requests = sdapi.state.generations()
    refused = [r for r in requests if "a refused thing" in r.payload.get("prompt", "")]
    assert len(refused) == 1, f"the failed item was sent {len(refused)} times"
    assert sum(r.path == "txt2img" and r.status == 200 for r in requests) == 5
    assert sum(r.path == "img2img" and r.status == 200 for r in requests) == 5
    bad_key = f"{COTE}/bad/{COTE}_bad_1"
    claimed = [
        e
        for e in events(work)
        if e.get("event") == "item_claimed"
        and unicodedata.normalize("NFC", str(e.get("item"))) == bad_key
    ]
    assert len(claimed) == 1, f"the failed item was claimed {len(claimed)} times"


def test_case_twins_in_one_prompts_file_are_refused_at_validation(
    mac_share: MacLikeMount, sdapi: sdapi_server.SdapiHTTPServer, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    cfg = mac_config(mac_share.mountpoint, work, sdapi.url)
    ready(mac_share, cfg)
    doc = {
        "jobs": [
            {"nation": "Italy", "category": "family", "prompt": "a family", "count": 1},
            {"nation": "italy", "category": "family", "prompt": "a family", "count": 1},
        ]
    }
    (work / "twins.json").write_text(json.dumps(doc))
    checked = run_emif("validate", str(work / "twins.json"))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "Italy" in checked.stdout + checked.stderr
    assert "italy" in checked.stdout + checked.stderr
    enqueue(cfg, work, "twins.json", doc, force=True)
    run_once(cfg, work)
    server = mac_share.source
    error = server / "queue" / "rejected" / "twins.error.json"
    assert error.exists(), f"not refused at intake\n{log_excerpt(work)}"
    problems = json.loads(error.read_text())["problems"]
    assert any("Italy" in p and "italy" in p for p in problems), problems
    assert sdapi.state.generations() == []
    assert not (server / "GENERATIONS").exists() or not os.listdir(server / "GENERATIONS")


def test_a_case_twin_of_an_existing_folder_is_refused_at_validation(
    mac_share: MacLikeMount, sdapi: sdapi_server.SdapiHTTPServer, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    cfg = mac_config(mac_share.mountpoint, work, sdapi.url)
    ready(mac_share, cfg)
    job = {"category": "family", "prompt": "a family", "count": 1}
    enqueue(cfg, work, "first.json", {"jobs": [{"nation": "Italy", **job}]})
    assert run_once(cfg, work) == 0, log_excerpt(work)
    sent = len(sdapi.state.generations())
    second = {"jobs": [{"nation": "italy", **job, "count": 2}]}
    (work / "second.json").write_text(json.dumps(second))
    refused = run_emif("enqueue", str(work / "second.json"), "--config", str(cfg))
    assert refused.returncode == 1  # enqueue applies the daemon's rules, with its reasons
    assert "'italy' differs only in case from the existing folder" in refused.stdout
    enqueue(cfg, work, "second.json", second, force=True)
    run_once(cfg, work)
    server = mac_share.source
    error = server / "queue" / "rejected" / "second.error.json"
    assert error.exists(), f"not refused against GENERATIONS/Italy\n{log_excerpt(work)}"
    problems = json.loads(error.read_text())["problems"]
    assert any("italy" in p and "Italy" in p for p in problems), problems
    assert len(sdapi.state.generations()) == sent
    assert os.listdir(server / "GENERATIONS") == ["Italy"]


def test_a_missing_or_dropped_share_builds_nothing_locally_and_work_resumes(
    fuse_ok: None, tmp_path: Path
) -> None:
    """The mount point of an unmounted share is a plain empty folder on the local disk (a
    leftover /Volumes/<share>): the daemon must wait for the share, not build a tree there."""
    (tmp_path / "server").mkdir()
    share = MacLikeMount(tmp_path / "server", tmp_path / "Volumes" / "farm", dir_cache_s=1.0)
    local = share.mountpoint
    work = tmp_path / "work"
    with serving("drawthings", latency=0.4) as sd:
        cfg = mac_config(local, work, sd.url)
        with share:
            said = init_root(local, cfg)
        assert said == "", f"emif init ROOT must create the tree and its marker: {said}"
        assert os.listdir(local) == []
        proc = spawn(
            emif_cmd("run", "--no-progress", "--config", str(cfg)), stderr_to=work / "run.stderr"
        )
        try:
            wait_logged(work, lambda: count(work, "share_unavailable") >= 1, 30, "share missing")
            time.sleep(2)  # while it waits: nothing may appear on the local disk
            assert os.listdir(local) == [], "a tree was built on the local disk"
            assert proc.poll() is None, f"the daemon exited\n{log_excerpt(work)}"
            share.start()
            wait_logged(work, lambda: count(work, "share_back") >= 1, 30, "share back")
            doc = {"jobs": [{"nation": "Norway", "category": "c", "prompt": "p", "count": 6}]}
            enqueue(cfg, work, "resume.json", doc)
            gens = share.source / "GENERATIONS"
            wait_logged(work, lambda: len(pngs(gens)) >= 2, 60, "first generations")
            share.stop()  # the share drops mid-run
            wait_logged(work, lambda: count(work, "share_unavailable") >= 2, 30, "share dropped")
            time.sleep(2)
            assert os.listdir(local) == [], "a tree was built on the local disk mid-run"
            share.start()
            wait_logged(work, lambda: count(work, "share_back") >= 2, 30, "share back again")
            done = share.source / "queue" / "done" / "resume.json"
            ups = share.source / "UPSCALED_IMAGES"
            wait_logged(
                work,
                lambda: done.exists() and len(pngs(gens)) == 6 and len(pngs(ups)) == 6,
                90,
                "work resumed by itself",
            )
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            share.stop()
    assert code == 0
    sequence = [e["event"] for e in events(work) if e["event"].startswith("share_")]
    assert sequence == ["share_unavailable", "share_back"] * 2, sequence


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("hosts", [2, 3])
def test_files_enqueued_at_once_through_several_macs_never_share_an_index(
    fuse_ok: None, tmp_path: Path, hosts: int
) -> None:
    """The same farm on the Mac-like layer, one mount per Mac, listings cached 30 s (the
    least a Mac keeps them): under the intake lock each host plans from a listing of
    .emif/jobs/ and GENERATIONS/ that misses the other hosts' newest plans and images; the
    index reservations keep every batch's names its own."""
    (tmp_path / "server").mkdir()
    mounts = [
        MacLikeMount(tmp_path / "server", tmp_path / f"mac-{h}", dir_cache_s=30.0)
        for h in "abc"[:hosts]
    ]
    try:
        roots = {m.mountpoint.name: m.start().mountpoint for m in mounts}
        with serving("drawthings", latency=0.05) as sd:
            run = intake_trials(
                roots, tmp_path / "server", tmp_path / "work", sd.url, trials=10, listing_s=30.0
            )
    finally:
        for mount in mounts:
            mount.stop()
    problems = run.failures()
    assert not problems, run.summary() + "\n" + "\n".join(problems)
    print(run.summary())


def test_italy_and_italy_dropped_together_on_a_mac_share_never_end_with_images_missing(
    mac_share: MacLikeMount, sdapi: sdapi_server.SdapiHTTPServer, tmp_path: Path
) -> None:
    """a.json asks for Italy/family × 3, b.json for italy/family × 3, both dropped at once on
    a volume that ignores case: both were accepted with first_index 1 and b's images never
    made. Now the second is refused, naming the spelling the first recorded."""
    work = tmp_path / "work"
    cfg = mac_config(mac_share.mountpoint, work, sdapi.url)
    ready(mac_share, cfg)
    queue = mac_share.mountpoint / "queue"
    for name, nation in (("a.json", "Italy"), ("b.json", "italy")):
        doc = {"jobs": [{"nation": nation, "category": "family", "prompt": name, "count": 3}]}
        (queue / name).write_text(json.dumps(doc))
    run_once(cfg, work)
    server = mac_share.source
    said = {e["file"]: e for e in events(work) if e.get("event") == "batch_done"}
    refused = sorted(p.name for p in (server / "queue" / "rejected").glob("*.error.json"))
    made = sorted(pngs(server / "GENERATIONS"))
    for batch, done in said.items():  # never done with images missing
        own = [
            p
            for p in made
            if json.loads((server / "GENERATIONS" / p).with_suffix(".json").read_text())["source"]
            == batch
        ]
        assert (done["done"], done["failed"]) == (len(own), 0), (batch, done, made)
    if len(said) == 2:
        assert len(made) == 6
    else:
        assert len(said) == 1
        assert len(refused) == 1, log_excerpt(work)
        problems = json.loads((server / "queue" / "rejected" / refused[0]).read_text())["problems"]
        assert any("differs only in case" in p for p in problems), problems
        assert len(made) == 3
