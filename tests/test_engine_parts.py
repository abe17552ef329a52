"""The engine's parts on their own: hooks that fail, the drain rule, the outcome policy."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from emif_daemon.config.schema import parse_config
from emif_daemon.daemon.wiring import StageKit, claim_store, make_kit
from emif_daemon.engine.drain import DrainDetector
from emif_daemon.engine.hooks import Hook, Hooks
from emif_daemon.engine.keeper import Keeper
from emif_daemon.engine.outcomes import ItemOutcome, RunOutcome, Verdict, reason_for, verdict_for
from emif_daemon.engine.runner import Engine, Timing
from emif_daemon.engine.stage import Discovery, Item, StageBase, StageResult, Work
from emif_daemon.engine.usage import ResourceSample
from emif_daemon.errors import (
    ClaimLost,
    PermanentItemError,
    ServerUnavailable,
    Shutdown,
    StageUnavailable,
    TransientError,
)
from emif_daemon.retry import RetryPolicy
from emif_daemon.share.failure_records import FailureRecord
from emif_daemon.share.host_reports import HostState
from emif_daemon.share.layout import upscale_output
from emif_daemon.stages.image_files import PngTreeDiscovery
from tests.helpers import fast_sections, wait_for
from tests.tiny_daemon import ToyStage, expected_output


def kit_for(root: Path, host: str = "a") -> StageKit:
    return make_kit(
        parse_config(fast_sections(root, coordination={"host_id": host}), base_dir=root)
    )


def engine(kit: StageKit, stages: list[Any], hook: Hook, **timing: float) -> Engine:
    return Engine(
        stages,
        claim_store(kit.cfg, kit.ctx),
        kit.ctx.layout.failed,
        retry=RetryPolicy(max_attempts=2, base_s=0.01, cap_s=0.02),
        timing=Timing(**{"rescan_s": 0.05, "heartbeat_s": 0.05, **timing}),
        hooks=[hook],
        once=True,
    )


def run_with_deadline(e: Engine, seconds: float = 30.0) -> RunOutcome:
    """Run the engine in a thread; fail (after stopping it) if it does not return in time."""
    codes: list[RunOutcome] = []
    t = threading.Thread(target=lambda: codes.append(e.run()), name="engine-under-test")
    t.start()
    t.join(seconds)
    if t.is_alive():
        e.request_stop()
        t.join(10)
        pytest.fail(f"--once did not return within {seconds} s")
    return codes[0]


class MetricsWriterDown(Hook):
    """The share dropped as the items ended: every metrics write raises."""

    def __init__(self) -> None:
        self.calls = 0

    def item_finished(self, *args: Any) -> None:
        self.calls += 1
        raise OSError(5, "Input/output error", "metrics/a/toy.csv")


def test_a_metrics_writer_that_raises_does_not_keep_once_running(root: Path) -> None:
    (root / "inbox").mkdir()
    for name in ("x", "y", "z"):
        (root / "inbox" / f"{name}.txt").write_text(name)
    kit = kit_for(root)
    hooks = MetricsWriterDown()
    with capture_logs() as logs:
        code = run_with_deadline(engine(kit, [ToyStage(kit.ctx, work_s=0.0)], hooks))
    assert code == RunOutcome.DRAINED
    for name in ("x", "y", "z"):
        assert (root / "outbox" / f"{name}.out").read_bytes() == expected_output(name)
    assert hooks.calls == 3
    failures = [e for e in logs if e["event"] == "hook_failed"]
    assert len(failures) == 1  # once per hook until it works again, not once per item
    assert failures[0]["hook"] == "item_finished"
    assert "Input/output error" in failures[0]["error"]


class SleepGuardBroken(Hook):
    def __init__(self) -> None:
        self.calls = 0

    def busy(self, busy: bool) -> None:
        self.calls += 1
        raise RuntimeError("caffeinate: not found")


class HeartbeatWatcher(StageBase):
    """One item that waits, holding its claim, until the claim's mtime has advanced twice."""

    name = "watch"
    priority = 1

    def __init__(self, root: Path, claim: Path) -> None:
        self.root = root
        self.claim = claim
        self.mtimes: list[int] = []

    def discover(self) -> Discovery:
        out = self.root / "watched.out"
        return Discovery([] if out.exists() else [Item("watched", (out,))])

    def run(self, item: Item, work: Work) -> StageResult:
        deadline = time.monotonic() + 10
        self.mtimes = [self.claim.stat().st_mtime_ns]
        while len(set(self.mtimes)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
            work.check()
            self.mtimes.append(self.claim.stat().st_mtime_ns)
        work.commit(lambda: item.outputs[0].write_text("ok"))
        return StageResult(output="watched.out")


def test_an_on_busy_hook_that_raises_does_not_stop_the_heartbeat(root: Path) -> None:
    kit = kit_for(root)
    hooks = SleepGuardBroken()
    stage = HeartbeatWatcher(root, kit.ctx.layout.claims / "watch" / "watched.claim")
    with capture_logs() as logs:
        assert run_with_deadline(engine(kit, [stage], hooks)) == RunOutcome.DRAINED
    assert len(set(stage.mtimes)) >= 3, "the claim's mtime did not advance: no heartbeat"
    assert hooks.calls >= 2  # the keeper went on calling it after it raised
    assert [e["hook"] for e in logs if e["event"] == "hook_failed"] == ["busy"]
    assert (root / "watched.out").read_text() == "ok"


def test_guarded_hooks_log_once_per_failure_and_say_when_it_recovers() -> None:
    class Flaky(Hook):
        fail = True

        def report(self, state: HostState) -> None:
            if self.fail:
                raise OSError(28, "No space left on device")

    inner = Flaky()
    guarded = Hooks([inner])
    state = HostState(host="a", stopped=False)
    with capture_logs() as logs:
        guarded.report(state)
        guarded.report(state)
        inner.fail = False
        guarded.report(state)
    assert [e["event"] for e in logs] == ["hook_failed", "hook_recovered"]


def test_a_hook_that_raises_never_keeps_the_others_from_running() -> None:
    """Side jobs are a list, each guarded on its own: a broken metrics writer still lets
    the host report and the sleep guard hear of every call."""
    calls: list[str] = []

    class Broken(Hook):
        def report(self, state: HostState) -> None:
            raise OSError(5, "Input/output error")

        def busy(self, busy: bool) -> None:
            raise OSError(5, "Input/output error")

    class Heard(Hook):
        def report(self, state: HostState) -> None:
            calls.append("report")

        def busy(self, busy: bool) -> None:
            calls.append(f"busy {busy}")

    hooks = Hooks([Broken(), Heard()])
    with capture_logs() as logs:
        hooks.report(HostState(host="a", stopped=False))
        hooks.busy(True)
    assert calls == ["report", "busy True"]
    failed = [(e["job"], e["hook"]) for e in logs if e["event"] == "hook_failed"]
    assert failed == [("Broken", "report"), ("Broken", "busy")]


def test_a_pause_gate_that_raises_means_do_not_claim() -> None:
    class Broken(Hook):
        def may_claim(self) -> bool:
            raise ValueError("bad marker")

    with capture_logs():
        assert Hooks([Broken()]).may_claim() is False


def test_item_finished_gets_the_outcome_and_the_result(root: Path) -> None:
    seen: list[tuple[str, str, ItemOutcome, str | None]] = []

    class Recorder(Hook):
        def item_finished(
            self,
            stage: str,
            item: str,
            outcome: ItemOutcome,
            sample: ResourceSample,
            result: StageResult | None,
        ) -> None:
            seen.append((stage, item, outcome, result.output if result else None))

    (root / "inbox").mkdir()
    (root / "inbox" / "x.txt").write_text("x")
    kit = kit_for(root)
    assert (
        run_with_deadline(engine(kit, [ToyStage(kit.ctx, 0.0)], Recorder())) == RunOutcome.DRAINED
    )
    assert seen == [("toy", "x", ItemOutcome.DONE, "outbox/x.out")]


# -- the drain rule ------------------------------------------------------------------------


def ended_round(d: DrainDetector) -> int:
    """A whole round: started, then ended; its token."""
    token = d.round_started()
    d.round_ended()
    return token


def test_drained_only_when_every_stage_idled_after_the_last_finished_item() -> None:
    d = DrainDetector(["up", "down"])
    token = ended_round(d)
    assert not d.idle("up", token)  # "down" has not spoken yet
    d.item_started("down")
    d.item_finished(finished=True)  # its output may be new input for "up"
    assert not d.idle("down", ended_round(d))  # "up" idled before that item finished
    assert d.idle("up", ended_round(d))


def test_an_idle_round_that_began_before_an_item_finished_proves_nothing() -> None:
    d = DrainDetector(["a"])
    token = ended_round(d)
    d.item_started("a")
    d.item_finished(finished=True)
    assert not d.idle("a", token)
    assert d.idle("a", ended_round(d))


def test_an_item_in_hand_holds_draining_up() -> None:
    d = DrainDetector(["a", "b"])
    d.item_started("b")
    assert not d.idle("a", ended_round(d))
    d.retire("b")
    assert not d.drained.is_set()  # still in hand
    d.item_finished(finished=False)
    assert d.drained.is_set()


def test_a_stage_that_took_an_item_must_idle_again_before_draining() -> None:
    """An item given back unfinished (server down) is pending again: the stage's older idle
    round does not speak for it."""
    d = DrainDetector(["a", "b"])
    assert not d.idle("a", ended_round(d))
    d.item_started("a")
    d.item_finished(finished=False)
    assert not d.idle("b", ended_round(d))
    assert d.idle("a", ended_round(d))


def test_a_round_under_way_holds_draining_up() -> None:
    """Two workers of one stage: one idles while the other's round is still accepting a
    prompts file; that round's work is not known yet."""
    d = DrainDetector(["generate"])
    d.round_started()  # worker 1: intake in progress
    assert not d.idle("generate", ended_round(d))  # worker 2 found nothing
    d.round_ended()
    assert d.idle("generate", ended_round(d))


def test_retired_stages_never_hold_draining_up() -> None:
    d = DrainDetector(["a", "b"])
    d.retire("b")
    d.item_started("b")  # a retired stage stays retired
    d.item_finished(finished=True)
    assert d.idle("a", ended_round(d))


# -- the outcome policy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (Shutdown(), Verdict.GIVE_BACK),
        (ClaimLost("x"), Verdict.GIVE_BACK),
        (ServerUnavailable("down"), Verdict.WAIT_FOR_SERVER),
        (StageUnavailable("no checkpoint"), Verdict.STAGE_DOWN),
        (PermanentItemError("HTTP 422"), Verdict.FAIL_NOW),
        (TransientError("HTTP 500"), Verdict.RETRY),
        (ZeroDivisionError("bug"), Verdict.RETRY),
    ],
)
def test_each_error_class_has_one_verdict(exc: BaseException, verdict: Verdict) -> None:
    assert verdict_for(exc) is verdict


def test_reasons_name_a_bug_by_its_class() -> None:
    assert reason_for(TransientError("HTTP 500: busy")) == "HTTP 500: busy"
    assert reason_for(KeyError("seed")) == "unexpected KeyError: 'seed'"


def test_outcomes_say_whether_they_finish_the_item() -> None:
    assert {o for o in ItemOutcome if o.finished} == {
        ItemOutcome.DONE,
        ItemOutcome.FAILED,
        ItemOutcome.SKIPPED,
    }
    assert {o for o in ItemOutcome if o.metered} == {ItemOutcome.DONE, ItemOutcome.FAILED}


def test_a_failure_record_that_cannot_be_written_gives_the_item_back(root: Path) -> None:
    """Without its record the item would be retried by every host for ever: it is given
    back with a loud line, never counted as failed."""

    class AlwaysPermanent(StageBase):
        name = "perm"
        priority = 1

        def __init__(self) -> None:
            self.calls = 0

        def discover(self) -> Discovery:
            return Discovery([Item("x", (root / "x.out",))] if self.calls == 0 else [])

        def run(self, item: Item, work: Work) -> StageResult:
            self.calls += 1
            raise PermanentItemError("HTTP 422: bad key")

    def share_full(record: FailureRecord) -> Path:
        raise OSError(28, "No space left on device", record.item)

    kit = kit_for(root)
    stage = AlwaysPermanent()
    e = engine(kit, [stage], Hook())
    e.failures["perm"].record = share_full  # type: ignore[method-assign]
    with capture_logs() as logs:
        run_with_deadline(e)
    assert stage.calls == 1
    events = [e["event"] for e in logs]
    assert "failure_record_failed" in events
    assert "item_failed" not in events
    wait_for(lambda: not (kit.ctx.layout.claims / "perm" / "x.claim").exists(), 5)


def test_an_unreadable_input_folder_is_logged_once_and_the_rest_is_discovered(
    root: Path,
) -> None:
    kit = kit_for(root)
    gens = kit.ctx.layout.generations
    for folder in ("Italy/family", "Peru/working"):
        (gens / folder).mkdir(parents=True)
        (gens / folder / "a.png").write_bytes(b"png")
    finder = PngTreeDiscovery(
        kit.ctx, inputs=gens, outputs=kit.ctx.layout.upscaled, output_of=upscale_output
    )

    def scandir(path: Any) -> Any:
        if str(path).endswith("Peru"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return os.scandir(path)

    finder.in_scan.scandir = scandir
    with capture_logs() as logs:
        first = finder.discover()
        second = finder.discover()
    assert [i.key for i in first.items] == ["Italy/family/a.png"]
    assert [i.key for i in second.items] == ["Italy/family/a.png"]
    said = [e for e in logs if e["event"] == "folder_unreadable"]
    assert len(said) == 1
    assert said[0]["path"].endswith("GENERATIONS/Peru")


def test_an_io_error_on_a_heartbeat_is_logged_and_retried_never_taken_for_a_loss(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A share answers EIO now and then: the claim stays ours and the next beat goes through."""
    kit = kit_for(root)
    store = claim_store(kit.cfg, kit.ctx)
    claim = store.try_claim("toy", "x")
    assert claim is not None
    keeper = Keeper(store, Hooks(), Timing(), {}, lambda: HostState("a", False))
    real_open = os.open
    fail = [True]

    def flaky(path: Any, flags: int, *args: Any) -> int:
        if fail[0] and str(path).endswith("x.claim"):
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", flaky)
    with capture_logs() as logs:
        keeper.heartbeat()
        fail[0] = False
        before = claim.path.stat().st_mtime_ns
        time.sleep(0.01)
        keeper.heartbeat()
    assert [e["event"] for e in logs] == ["heartbeat_failed"]
    assert not claim.lost
    assert claim.path.stat().st_mtime_ns > before
    assert store.commit(claim, lambda: None)


def test_no_claim_lost_is_said_for_a_claim_committed_while_the_keeper_held_it(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = kit_for(root)
    store = claim_store(kit.cfg, kit.ctx)
    claim = store.try_claim("toy", "x")
    assert claim is not None
    snapshot = store.held()
    assert store.commit(claim, lambda: None)
    monkeypatch.setattr(store, "held", lambda: snapshot)  # the keeper's older look
    keeper = Keeper(store, Hooks(), Timing(), {}, lambda: HostState("a", False))
    with capture_logs() as logs:
        keeper.heartbeat()
    assert logs == []
