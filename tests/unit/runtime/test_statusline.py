"""The caught-up status line as a pure function: a snapshot in, one line out, in words that never
contradict themselves, coloured only when asked, cut to the terminal's width."""

from __future__ import annotations

import pytest

from audit_otlp.runtime.statusline import Progress, format_status_line
from tests.helpers.terminal import ANSI

NOW = 1_000.0
HEALTHY = Progress(0, 0, 0, delivered=12_480, backlog_rows=0, last_success_unix=NOW - 1)

SCENARIOS = [
    (
        "caught up and healthy",
        HEALTHY,
        "delivered 12,480 (41/s) · backlog 0 rows, 0 B · last 2xx 1s ago · retrying 0 · dead-lettered 0 · chain intact",
    ),
    (
        "a collector answering 503",
        Progress(
            0, 0, 62_464, delivered=12_480, backlog_rows=312, last_success_unix=NOW - 133, retrying=4, last_error="HTTP 503"
        ),
        "delivered 12,480 (41/s) · backlog 312 rows, 61.0 KiB · last 2xx 2m13s ago · retrying 4 (HTTP 503) · dead-lettered 0"
        " · chain intact · last error: HTTP 503",
    ),
    (
        "never a 2xx, a backlog not yet counted",
        Progress(0, 0, 2048, last_error="ConnectError: All connection attempts failed", retrying=1),
        "delivered 0 (41/s) · backlog ? rows, 2.0 KiB · last 2xx never · retrying 1 (ConnectError: All connection attempts failed)"
        " · dead-lettered 0 · chain intact · last error: ConnectError: All connection attempts failed",
    ),
    (
        "breaks and dead letters",
        Progress(0, 0, 0, delivered=5, backlog_rows=0, last_success_unix=NOW, dead_lettered=2, chain={"break": 1221}),
        "delivered 5 (41/s) · backlog 0 rows, 0 B · last 2xx 0s ago · retrying 0 · dead-lettered 2 · chain 1,221 breaks",
    ),
    (
        "one break, in the singular",
        Progress(0, 0, 0, backlog_rows=0, chain={"break": 1, "fork": 0}),
        "delivered 0 (41/s) · backlog 0 rows, 0 B · last 2xx never · retrying 0 · dead-lettered 0 · chain 1 break",
    ),
    (
        "forks of parallel tool calls, no break",
        Progress(0, 0, 0, backlog_rows=0, chain={"break": 0, "fork": 13}),
        "delivered 0 (41/s) · backlog 0 rows, 0 B · last 2xx never · retrying 0 · dead-lettered 0 · chain 13 forks",
    ),
    (
        "verification off",
        Progress(0, 0, 0, backlog_rows=0, chain_verified=False, chain={"break": 3}),
        "delivered 0 (41/s) · backlog 0 rows, 0 B · last 2xx never · retrying 0 · dead-lettered 0 · chain not verified",
    ),
]


@pytest.mark.parametrize(("progress", "expected"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_the_line_says_what_a_person_needs_at_a_glance(progress: Progress, expected: str) -> None:
    assert format_status_line(progress, 41.2, NOW, width=300) == expected


def test_colour_only_when_asked_and_the_words_stay_the_same() -> None:
    failing = Progress(0, 0, 10, retrying=1, last_error="HTTP 503", dead_lettered=1, chain={"break": 2})
    plain = format_status_line(failing, 0, NOW, width=300)
    coloured = format_status_line(failing, 0, NOW, width=300, colour=True)
    assert "\x1b[" not in plain
    assert ANSI.sub("", coloured) == plain
    assert "\x1b[31mchain 2 breaks" in coloured and "\x1b[31mdead-lettered 1" in coloured and "\x1b[33mretrying 1" in coloured
    assert "\x1b[32mchain intact" in format_status_line(HEALTHY, 0, NOW, width=300, colour=True)
    forks = Progress(0, 0, 0, chain={"break": 0, "fork": 2})
    assert "\x1b[33mchain 2 forks" in format_status_line(forks, 0, NOW, width=300, colour=True)  # not alarming red


@pytest.mark.parametrize("width", [200, 100, 60, 40, 20, 5])
def test_the_line_never_needs_more_than_the_terminal_width(width: int) -> None:
    failing = Progress(0, 0, 62_464, backlog_rows=312, retrying=4, last_error="ConnectError: " + "x" * 200)
    for colour in (False, True):
        shown = ANSI.sub("", format_status_line(failing, 3, NOW, width=width, colour=colour))
        assert len(shown) <= max(width - 1, 10), shown
        assert shown.startswith("delivered")  # what is dropped first is what matters least
