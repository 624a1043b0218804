"""When to try again: exponential backoff with full jitter, and Retry-After."""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import time
from dataclasses import dataclass

RETRY_AFTER_CAP = 300.0  # never let one header park delivery for longer than this


@dataclass
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    attempt: int = 0

    def ceiling(self) -> float:
        return min(self.maximum, self.initial * 2.0 ** min(self.attempt, 30))

    def next_delay(self, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**attempt)] (AWS architecture blog),
        so several workers retrying against one collector do not stampede it in step."""
        ceiling = self.ceiling()
        self.attempt += 1
        return (rng or random).uniform(0, ceiling)


def parse_retry_after(value: str | None, now: float | None = None, cap: float = RETRY_AFTER_CAP) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP-date), within [0, cap].

    Fractional seconds are accepted (the Python SDK does); anything unparsable is ignored (None),
    and the caller falls back to its own backoff.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds):
            return None
        return min(max(seconds, 0.0), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000" or no zone: HTTP-dates are always GMT
        when = when.replace(tzinfo=datetime.UTC)
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(delay, 0.0), cap)
