"""How long the rest will take: from how fast the last images were made, not from an
hour's average (one minute into a batch that average says hours)."""

from __future__ import annotations

RECENT = 20  # finished items the rate is taken over
QUIET_S = 600.0  # no item finished for this long: no rate, the farm is not working


def recent_rate(finished: list[float], now: float) -> float | None:
    """Items per second over the last RECENT finish times (all hosts); None while there
    are too few, or none lately."""
    times = sorted(finished)[-RECENT:]
    if len(times) < 2 or now - times[-1] > QUIET_S or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


def eta_seconds(remaining: int, rate: float | None) -> int | None:
    if remaining == 0:
        return 0
    return round(remaining / rate) if rate else None
