"""Failed items: `.emif/failed/<stage>/<item>.json`, one record each, skipped until
`emif retry`. The one place that knows where records live and how keys map to files."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from .files import atomic_write_json
from .watch import TreeScanner

SUFFIX = ".json"


class FailureLog:
    """The failure records of one stage; listing them again is cheap (TreeScanner)."""

    def __init__(self, failed_dir: Path, stage: str) -> None:
        self.folder = failed_dir / stage
        self._scanner = TreeScanner(self.folder, want=lambda n: n.endswith(SUFFIX))

    def path(self, key: str) -> Path:
        return self.folder / (key + SUFFIX)

    def keys(self) -> set[str]:
        return {rel.removesuffix(SUFFIX) for rel in self._scanner.scan()}

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def read(self, key: str) -> dict[str, Any]:
        """The record, or {} if it is gone or unreadable."""
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(self.path(key).read_bytes())
            if isinstance(doc, dict):
                return doc
        return {}

    def record(self, key: str, doc: dict[str, Any]) -> Path:
        path = self.path(key)
        atomic_write_json(path, doc)
        return path

    def forget(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
