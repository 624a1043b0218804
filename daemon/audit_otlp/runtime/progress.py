"""`run --foreground` on a terminal: one self-overwriting line (rows/s, bytes left, ETA) while the
daemon catches up on a backlog. Log records still print normally: the line is erased before each
record and drawn again after it, so the two never garble each other. Nothing here on a non-TTY."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

ERASE = "\r\033[K"
WINDOW_SECONDS = 5.0  # rates are averaged over this much recent history


@dataclass(frozen=True)
class Progress:
    """A snapshot of delivery: cumulative counters plus what is left."""

    rows_settled: int  # rows delivered or dead-lettered this run
    bytes_settled: int
    backlog_bytes: int


class TerminalLine:
    """Owns the bottom line of the terminal; also the stream the log handler writes to."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = ""  # what is drawn now ("" = nothing)

    # The logging.StreamHandler stream protocol: write, flush (and isatty for the formatter).
    def write(self, data: str) -> None:
        if self.text:
            self.stream.write(ERASE)
        self.stream.write(data)
        if self.text and data.endswith("\n"):
            self.stream.write(self.text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def show(self, text: str) -> None:
        if text != self.text:
            self.stream.write(ERASE + text)
            self.stream.flush()
            self.text = text

    def clear(self) -> None:
        self.show("")


def format_progress(rows_per_s: float, bytes_per_s: float, backlog_bytes: int) -> str:
    eta = "?" if bytes_per_s <= 0 else _duration(backlog_bytes / bytes_per_s)
    return f"catching up: {rows_per_s:,.0f} rows/s, {_bytes(backlog_bytes)} left, ETA {eta}"


class ProgressReporter:
    """Samples `snapshot()` every `interval` seconds and shows the line while a backlog remains."""

    def __init__(
        self,
        line: TerminalLine,
        snapshot: Callable[[], Progress],
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.line = line
        self.snapshot = snapshot
        self.interval = interval
        self.clock = clock
        self._samples: deque[tuple[float, Progress]] = deque()

    def tick(self) -> str:
        now, current = self.clock(), self.snapshot()
        self._samples.append((now, current))
        while len(self._samples) > 2 and now - self._samples[0][0] > WINDOW_SECONDS:
            self._samples.popleft()
        if current.backlog_bytes <= 0:
            self.line.clear()
            return ""
        if not self.line.text and (len(self._samples) < 2 or self._samples[-2][1].backlog_bytes <= 0):
            return ""  # a backlog must last two samples: rows that arrive and leave at once are not catching up
        then, old = self._samples[0]
        elapsed = now - then
        rows_rate = (current.rows_settled - old.rows_settled) / elapsed if elapsed > 0 else 0.0
        bytes_rate = (current.bytes_settled - old.bytes_settled) / elapsed if elapsed > 0 else 0.0
        text = format_progress(rows_rate, bytes_rate, current.backlog_bytes)
        self.line.show(text)
        return text

    async def run(self) -> None:
        try:
            while True:
                self.tick()
                await asyncio.sleep(self.interval)
        finally:
            self.line.clear()


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
