"""Rate-limited logging: one loud line per kind of trouble per interval, the repeats at debug.

A collector that is down for an hour must not fill the journal with a line per retry, yet the
operator must see the trouble at once, and again while it lasts.
"""

from __future__ import annotations

import logging
import time

LOUD_EVERY = 60.0  # seconds between two loud errors of the same kind


class RateLimitedLog:
    """At most one message of each kind per `every` seconds at its level; the rest at debug."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._last_logged: dict[str, float] = {}

    def log(self, kind: str, every: float, level: int, message: str) -> None:
        now = time.monotonic()
        last = self._last_logged.get(kind)
        if last is None or now - last >= every:
            self._last_logged[kind] = now
            self.logger.log(level, message)
        else:
            self.logger.debug(message)
