from __future__ import annotations

import email.utils
import random

from hypothesis import given
from hypothesis import strategies as st

from audit_otlp.delivery.retry import RETRY_AFTER_CAP, Backoff, parse_retry_after


@given(st.floats(0.001, 5), st.floats(5, 60), st.integers(0, 80), st.integers(0, 2**32))
def test_full_jitter_stays_within_the_exponential_ceiling(initial: float, maximum: float, attempts: int, seed: int) -> None:
    backoff = Backoff(initial, maximum)
    rng = random.Random(seed)
    for attempt in range(attempts):
        ceiling = min(maximum, initial * 2**attempt)
        assert 0 <= backoff.next_delay(rng) <= ceiling


def test_full_jitter_is_spread_not_fixed() -> None:
    rng = random.Random(1)
    delays = [Backoff(1.0, 1.0, attempt=5).next_delay(rng) for _ in range(200)]
    assert min(delays) < 0.2 and max(delays) > 0.8


def test_retry_after_delay_seconds() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("999999") == RETRY_AFTER_CAP
    assert parse_retry_after("10", cap=4) == 4


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 10**6, usegmt=True), now=now) == RETRY_AFTER_CAP
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=784111777.0) == 0.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=784111777.0 - 12) == 12.0


def test_retry_after_garbage_is_ignored() -> None:
    for value in (None, "", "soon", "nan", "inf", "Mon, 99 Foo 2020"):
        assert parse_retry_after(value) is None
