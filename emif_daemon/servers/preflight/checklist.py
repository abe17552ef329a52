"""What a preflight looks at (each payload as a stage sends it) and what it found."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from emif_daemon.servers.dialects import where_of


@dataclass(frozen=True)
class Use:
    """One payload as a stage sends it: to which endpoint, under what name in messages."""

    label: str  # "generate", "upscale pass 2"
    payload: Mapping[str, Any]
    endpoint: str  # txt2img | img2img | extras

    @property
    def where(self) -> str:
        return where_of(self.payload, self.label)


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)  # each turns the stage off
    warnings: list[str] = field(default_factory=list)  # worth knowing, not blocking
    # names that could not be checked (Draw Things' files on another Mac, a folder that
    # cannot be read): `emif check` fails unless --allow-unverified, the daemon warns
    unverified: list[str] = field(default_factory=list)
    app_values: dict[str, Any] = field(default_factory=dict)  # Draw Things: keys left out
