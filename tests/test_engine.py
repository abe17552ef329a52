"""The engine with a trivial stage: exactly once under races, retries, failures, --once."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

from emif_daemon.config.schema import parse_config
from emif_daemon.daemon.wiring import StageKit, claim_store, make_kit
from emif_daemon.engine.outcomes import RunOutcome
from emif_daemon.engine.runner import Engine, Timing
from emif_daemon.engine.stage import Discovery, Item, StageBase, StageResult, Work
from emif_daemon.errors import PermanentItemError, TransientError
from emif_daemon.retry import RetryPolicy, compute_backoff
from tests.helpers import fast_sections
from tests.tiny_daemon import ToyStage, expected_output


def runtime(root: Path, host: str) -> StageKit:
    sections = fast_sections(root, coordination={"host_id": host})
    cfg = parse_config(sections, base_dir=root)
    return make_kit(cfg)


def engine_for(rt: StageKit, stages: list[Any], **kw: Any) -> Engine:
    return Engine(
        stages,
        claim_store(rt.cfg, rt.ctx),
        rt.ctx.layout.failed,
        retry=kw.pop("retry", RetryPolicy(max_attempts=3, base_s=0.01, cap_s=0.02)),
        timing=Timing(rescan_s=0.05, heartbeat_s=0.1),
        once=True,
        **kw,
    )


def test_two_engines_in_threads_make_each_of_200_items_exactly_once(root: Path) -> None:
    (root / "inbox").mkdir()
    for i in range(200):
        (root / "inbox" / f"{i:03}.txt").write_text("x")
    engines = []
    for host in ("a", "b"):
        rt = runtime(root, host)
        engines.append(engine_for(rt, [ToyStage(rt.ctx, work_s=0.0)]))
    codes: list[RunOutcome] = []
    threads = [threading.Thread(target=lambda e=e: codes.append(e.run())) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == [RunOutcome.DRAINED, RunOutcome.DRAINED]
    runs = Counter(line.split()[0] for line in (root / "runs.log").read_text().splitlines())
    assert len(runs) == 200
    assert set(runs.values()) == {1}
    hosts = Counter(line.split()[1] for line in (root / "runs.log").read_text().splitlines())
    assert hosts["a"] > 0
    assert hosts["b"] > 0
    for i in range(200):
        out = root / "outbox" / f"{i:03}.out"
        assert out.read_bytes() == expected_output(f"{i:03}")


class FlakyStage(StageBase):
    """Items named 'transient*' fail `fails` times then succeed; 'permanent*' always fail."""

    name = "flaky"
    priority = 1

    def __init__(self, root: Path, fails: int) -> None:
        self.root = root
        self.fails = fails
        self.calls: Counter[str] = Counter()

    def discover(self) -> Discovery:
        items = []
        for key in ("transient", "permanent", "crash"):
            out = self.root / f"{key}.out"
            if not out.exists():
                items.append(Item(key, (out,)))
        return Discovery(items)

    def run(self, item: Item, work: Work) -> StageResult:
        self.calls[item.key] += 1
        if item.key == "permanent":
            raise PermanentItemError('HTTP 422: Unrecognized keys: ["foo"]')
        if item.key == "crash":
            raise ZeroDivisionError("bug in a stage")
        if self.calls[item.key] <= self.fails:
            raise TransientError("HTTP 500: busy")
        work.commit(lambda: item.outputs[0].write_text("ok"))
        return StageResult(output=item.outputs[0].name)


def test_retries_then_fails_and_records_reasons(root: Path) -> None:
    rt = runtime(root, "a")
    stage = FlakyStage(root, fails=2)
    engine = engine_for(rt, [stage])
    assert engine.run() == RunOutcome.PROBLEMS
    assert (root / "transient.out").read_text() == "ok"
    assert stage.calls == {"transient": 3, "permanent": 1, "crash": 3}
    record = (rt.ctx.layout.failed / "flaky" / "permanent.json").read_text()
    assert "Unrecognized keys" in record
    assert "ZeroDivisionError" in (rt.ctx.layout.failed / "flaky" / "crash.json").read_text()
    # A failed item is skipped from then on: a second run calls nothing.
    again = FlakyStage(root, fails=0)
    assert engine_for(runtime(root, "a"), [again]).run() == RunOutcome.PROBLEMS
    assert again.calls == {}


def test_backoff_doubles_and_caps() -> None:
    delays = [compute_backoff(n, base=2, cap=20, jitter=False) for n in range(1, 7)]
    assert delays == [2, 4, 8, 16, 20, 20]
    for n in range(1, 50):
        assert 0.75 * 2 <= compute_backoff(n, base=2, cap=20) <= 1.25 * 20


def test_backoff_stays_at_the_cap_however_long_a_server_is_down() -> None:
    """2**attempt overflowed a float after ~1000 attempts: hours of a probe loop."""
    assert compute_backoff(5000, base=0.5, cap=10, jitter=False) == 10
