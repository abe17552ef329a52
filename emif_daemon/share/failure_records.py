"""Failed items: `.emif/failed/<stage>/<item>.json`, one record each, skipped until
`emif retry`. The one place that knows where records live and how keys map to files."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from emif_daemon.share.atomic import atomic_write_json
from emif_daemon.share.clock import utc_stamp
from emif_daemon.share.watch import TreeScanner

SUFFIX = ".json"
MAX_PLAIN_BYTES = 200  # a record's name, and its temp name's ~40 bytes more, within 255
HASHED = "~h"


@dataclass(frozen=True)
class FailureRecord:
    """Why an item failed; what `emif status`, batch summaries and `emif retry` read."""

    stage: str
    item: str
    reason: str
    attempts: int
    host: str
    batch: str | None = None
    failed_at: str = ""

    @classmethod
    def now(
        cls, stage: str, item: str, reason: str, attempts: int, host: str, batch: str | None
    ) -> FailureRecord:
        at = utc_stamp()
        return cls(stage, item, reason, attempts, host, batch, at)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any], stage: str, item: str) -> FailureRecord:
        """Tolerant: a record written by hand or by an older version still reads."""
        attempts = doc.get("attempts")
        batch = doc.get("batch")
        return cls(
            stage=stage,
            item=item,
            reason=str(doc.get("reason", "")),
            attempts=attempts if isinstance(attempts, int) else 0,
            host=str(doc.get("host", "")),
            batch=batch if isinstance(batch, str) else None,
            failed_at=str(doc.get("failed_at", "")),
        )


class FailureLog:
    """The failure records of one stage; listing them again is cheap (TreeScanner)."""

    def __init__(self, failed_dir: Path, stage: str) -> None:
        self.stage = stage
        self.folder = failed_dir / stage
        self._scanner = TreeScanner(self.folder, want=lambda n: n.endswith(SUFFIX))

    def path(self, key: str) -> Path:
        """`<key>.json`; for a name too long for that (and its temp name while written),
        a short name with the key's hash, the key itself inside (`item`)."""
        head, _, name = key.rpartition("/")
        if len((name + SUFFIX).encode()) <= MAX_PLAIN_BYTES:
            return self.folder / (key + SUFFIX)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        short = name.encode()[:80].decode(errors="ignore")
        return self.folder / head / f"{short}{HASHED}{digest}{SUFFIX}"

    def keys(self) -> set[str]:
        out = set()
        for rel in self._scanner.scan():
            if HASHED in rel.rpartition("/")[2]:
                record = self._read(self.folder / self._scanner.actual(rel), "")
                if record is not None and record.item:
                    out.add(record.item)
                continue
            out.add(rel.removesuffix(SUFFIX))
        return out

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def read(self, key: str) -> FailureRecord | None:
        """The record, or None if it is gone or unreadable."""
        return self._read(self.path(key), key)

    def _read(self, path: Path, key: str) -> FailureRecord | None:
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(path.read_bytes())
            if isinstance(doc, dict):
                return FailureRecord.from_json(doc, self.stage, key or str(doc.get("item", "")))
        return None

    def record(self, record: FailureRecord) -> Path:
        path = self.path(record.item)
        atomic_write_json(path, record.to_json())
        return path

    def forget(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
