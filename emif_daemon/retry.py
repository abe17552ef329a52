"""Retry policy and backoff: small pure values, tested with jitter off."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


def compute_backoff(attempt: int, *, base: float, cap: float, jitter: bool = True) -> float:
    """Seconds to wait before attempt `attempt + 1`: base·2^(attempt-1), capped, ±25 % jitter."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    try:
        delay = min(cap, math.ldexp(base, attempt - 1))
    except OverflowError:  # a server down for hours: attempt 1025 would not fit in a float
        delay = cap
    if jitter:
        delay *= random.uniform(0.75, 1.25)
    return delay


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_s: float = 2.0
    cap_s: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got {self.base_s}, {self.cap_s}")

    def delay(self, attempt: int) -> float:
        return compute_backoff(attempt, base=self.base_s, cap=self.cap_s, jitter=self.jitter)
