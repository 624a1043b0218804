"""The line a person watches once `run --foreground` has caught up: what was delivered and how
fast, what is left, when a collector last answered 2xx, what is being retried and why, what was
dead-lettered, how the hash chain looks, and the collector's last error. Pure: a snapshot in,
one line out, cut to the terminal's width (a line that wrapped could not be redrawn in place),
coloured only when asked (the caller knows whether it writes to a terminal)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from audit_otlp.runtime.logs import counted

GREEN, YELLOW, RED, DIM, RESET = "\033[32m", "\033[33m", "\033[31m", "\033[2m", "\033[0m"
SEPARATOR = " · "


@dataclass(frozen=True)
class Progress:
    """A snapshot of delivery: cumulative counters plus what is left (see `runtime.foreground`)."""

    rows_settled: int  # rows delivered or dead-lettered this run (for the catch-up rate)
    bytes_settled: int
    backlog_bytes: int
    delivered: int = 0  # spans acknowledged with 2xx this run
    backlog_rows: int | None = None  # None: not counted (a large backlog)
    last_success_unix: float | None = None
    retrying: int = 0  # requests waiting for their next attempt
    last_error: str | None = None  # set while exports are failing
    dead_lettered: int = 0
    chain_verified: bool = True  # False: chain.verify is off
    chain: Mapping[str, int] = field(default_factory=dict)  # verdict ("break", "fork") -> rows this run


def format_status_line(p: Progress, spans_per_s: float, now: float | None = None, width: int = 200, colour: bool = False) -> str:
    segments: list[tuple[str, str]] = [
        (f"delivered {p.delivered:,} ({spans_per_s:,.0f}/s)", GREEN if p.delivered else ""),
        (_backlog(p), YELLOW if p.backlog_bytes else ""),
        (f"last 2xx {_ago(p.last_success_unix, now)}", "" if p.last_error is None else YELLOW),
        (f"retrying {p.retrying}" + (f" ({p.last_error})" if p.retrying and p.last_error else ""), YELLOW if p.retrying else ""),
        (f"dead-lettered {p.dead_lettered:,}", RED if p.dead_lettered else ""),
        _chain(p),
    ]
    if p.last_error is not None:
        segments.append((f"last error: {p.last_error}", RED))
    return _fit(segments, width, colour)


def _backlog(p: Progress) -> str:
    rows = "? rows" if p.backlog_rows is None else counted(p.backlog_rows, "row")
    return f"backlog {rows}, {human_bytes(p.backlog_bytes)}"


def _chain(p: Progress) -> tuple[str, str]:
    if not p.chain_verified:
        return "chain not verified", DIM
    counts = [counted(n, verdict) for verdict, n in p.chain.items() if n]
    if not counts:
        return "chain intact", GREEN
    # A break is evidence of tampering or loss; forks are what parallel tool calls of the producer write.
    return "chain " + ", ".join(counts), RED if p.chain.get("break") else YELLOW


def _ago(unix: float | None, now: float | None) -> str:
    if unix is None:
        return "never"
    return f"{duration(max((now if now is not None else time.time()) - unix, 0.0))} ago"


def _fit(segments: list[tuple[str, str]], width: int, colour: bool) -> str:
    """Drop segments from the end, then cut the last one, until the visible text fits `width - 1`
    columns (the last column stays free: writing it makes some terminals wrap at once)."""
    limit = max(width - 1, 10)
    kept = list(segments)
    while len(kept) > 1 and len(SEPARATOR.join(t for t, _ in kept)) > limit:
        kept.pop()
    plain = SEPARATOR.join(t for t, _ in kept)
    if len(plain) > limit:
        text, hue = kept[-1]
        kept[-1] = (text[: max(len(text) - (len(plain) - limit) - 1, 0)] + "…", hue)
    if not colour:
        return SEPARATOR.join(t for t, _ in kept)
    return SEPARATOR.join(f"{hue}{t}{RESET}" if hue else t for t, hue in kept)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
