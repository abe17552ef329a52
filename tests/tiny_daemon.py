"""The one test daemon: the real daemon, with stages a test can run here (real processes).

    python -m tests.tiny_daemon CONFIG [--once]
        the real stages, with a tiny random-weights Segment Anything in the segment stage
        (Meta's weights cannot be downloaded here)
    python -m tests.tiny_daemon CONFIG --toy [--once] [--work-s S] [--pause-in-commit S]
        one trivial stage, for the claim, crash and shutdown tests

The toy stage: `inbox/<name>.txt` → `outbox/<name>.out` (a few hundred KB written slowly in
chunks, so a SIGKILL lands mid-write) + `outbox/<name>.json`, a sidecar naming the host and
the output's sha256, published like the real stages' (image first, both no-replace); every
execution appends a line to `runs.log`. `--pause-in-commit S` writes `publishing-<pid>` under
the root inside the commit, after the ownership check, then waits S seconds before the
renames: a test stops the process there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from emif_daemon.cli.run import EXIT_CODE
from emif_daemon.config.schema import load_config
from emif_daemon.daemon.wiring import StageKit, build_stages, enabled_stages, host_id, run_daemon
from emif_daemon.engine.stage import (
    Discovery,
    Item,
    Stage,
    StageBase,
    StageContext,
    StageResult,
    Work,
)
from emif_daemon.observe.log_setup import configure_logging
from emif_daemon.share.atomic import publish_new, rename_noreplace, temp_name
from emif_daemon.share.watch import TreeScanner

TINY_SAM = "tests.tiny_sam:build"

CHUNKS = 8
CHUNK = b"0123456789abcdef" * 4096  # 64 KiB


def expected_output(key: str) -> bytes:
    return key.encode() + b"\n" + CHUNK * CHUNKS


class ToyStage(StageBase):
    name = "toy"
    priority = 1

    def __init__(self, ctx: StageContext, work_s: float, pause_in_commit: float = 0.0) -> None:
        self.ctx = ctx
        self.work_s = work_s
        self.pause_in_commit = pause_in_commit
        self.inbox = ctx.layout.root / "inbox"
        self.outbox = ctx.layout.root / "outbox"
        self.scan_in = TreeScanner(self.inbox, want=lambda n: n.endswith(".txt"))
        self.scan_out = TreeScanner(self.outbox, want=lambda n: n.endswith(".out"))

    def discover(self) -> Discovery:
        done = self.scan_out.scan()
        items = []
        for rel in sorted(self.scan_in.scan()):
            key = rel.removesuffix(".txt")
            if key + ".out" not in done:
                items.append(Item(key, (self.outbox / (key + ".out"),), self.inbox / rel))
        return Discovery(items)

    def run(self, item: Item, work: Work) -> StageResult:
        output = item.outputs[0]
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(output)
        fd = os.open(self.ctx.layout.root / "runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{item.key} {self.ctx.host} {os.getpid()}\n".encode())
        os.close(fd)
        try:
            with open(tmp, "wb") as fh:
                fh.write(item.key.encode() + b"\n")
                for _ in range(CHUNKS):
                    fh.write(CHUNK)
                    fh.flush()
                    time.sleep(self.work_s / CHUNKS)
                    work.check()
                os.fsync(fh.fileno())
            work.commit(lambda: self._publish(tmp, output))
        finally:
            tmp.unlink(missing_ok=True)
        return StageResult(output=str(output.relative_to(self.ctx.layout.root)))

    def _publish(self, tmp: Path, output: Path) -> None:
        if self.pause_in_commit:
            (self.ctx.layout.root / f"publishing-{os.getpid()}").write_text(output.name)
            time.sleep(self.pause_in_commit)
        rename_noreplace(tmp, output)
        digest = hashlib.sha256(output.read_bytes()).hexdigest()
        sidecar = {"host": self.ctx.host, "pid": os.getpid(), "output_sha256": digest}
        publish_new(output.with_suffix(".json"), json.dumps(sidecar).encode())


def real_stages(kit: StageKit) -> list[Stage]:
    return build_stages(kit, enabled_stages(kit.cfg, None), segment_builder=TINY_SAM)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--toy", action="store_true", help="one trivial stage, no server")
    parser.add_argument("--work-s", type=float, default=0.05)
    parser.add_argument("--pause-in-commit", type=float, default=0.0)
    args = parser.parse_args()
    cfg = load_config(Path(args.config))
    host = host_id(cfg)
    log = cfg.paths.root / "logs" / f"{host}.jsonl"
    if cfg.logging.file:  # a test that fills the share keeps its log elsewhere
        log = Path(args.config).parent / cfg.logging.file
    configure_logging(host=host, file=log, stderr=False)

    def toy_stage(kit: StageKit) -> list[Stage]:
        return [ToyStage(kit.ctx, args.work_s, args.pause_in_commit)]

    stages = toy_stage if args.toy else real_stages
    outcome = run_daemon(cfg, once=args.once, stage_factory=stages, config_path=args.config)
    return EXIT_CODE[outcome]


if __name__ == "__main__":
    sys.exit(main())
