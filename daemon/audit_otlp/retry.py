"""When to try again: exponential backoff with full jitter, and Retry-After."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

RETRY_AFTER_CAP = 300.0  # never let one header park delivery for longer than this


@dataclass
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    attempt: int = 0

    def next_delay(self, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**attempt)] (AWS architecture blog)."""
        ceiling = min(self.maximum, self.initial * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return (rng or random).uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP-date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(delay, 0.0), RETRY_AFTER_CAP)
