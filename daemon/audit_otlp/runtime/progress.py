"""`run --foreground` on a terminal: one self-overwriting line at the bottom. While the daemon
catches up on a backlog it reads `catching up: rows/s, bytes left, ETA`; otherwise it is the
status line (`runtime.statusline`): delivered and rate, backlog, last 2xx, retries and why, dead
letters, chain, last error. Log records still print normally: the line is erased before each
record and drawn again after it, so the two never garble each other. Nothing here on a non-TTY."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from audit_otlp.runtime.statusline import Progress, duration, format_status_line, human_bytes

__all__ = ["Progress", "ProgressReporter", "TerminalLine", "format_progress"]

ERASE = "\r\033[K"
WINDOW_SECONDS = 5.0  # rates are averaged over this much recent history
CATCH_UP_BYTES = 256 * 1024  # a smaller backlog is live traffic, not a catch-up worth an ETA


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

    def width(self) -> int:
        """Columns of the terminal (a pty nobody sized reports 0: then COLUMNS, else 120)."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        return columns if columns > 0 else shutil.get_terminal_size((120, 24)).columns

    def show(self, text: str) -> None:
        if text != self.text:
            self.stream.write(ERASE + text)
            self.stream.flush()
            self.text = text

    def clear(self) -> None:
        self.show("")


def format_progress(rows_per_s: float, bytes_per_s: float, backlog_bytes: int) -> str:
    eta = "?" if bytes_per_s <= 0 else duration(backlog_bytes / bytes_per_s)
    return f"catching up: {rows_per_s:,.0f} rows/s, {human_bytes(backlog_bytes)} left, ETA {eta}"


class ProgressReporter:
    """Samples `snapshot()` every `interval` seconds and redraws the line."""

    def __init__(
        self,
        line: TerminalLine,
        snapshot: Callable[[], Progress],
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        colour: bool = True,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.line = line
        self.snapshot = snapshot
        self.interval = interval
        self.clock = clock
        self.colour = colour and "NO_COLOR" not in os.environ  # https://no-color.org
        self.wall_clock = wall_clock
        self._samples: deque[tuple[float, Progress]] = deque()

    def tick(self) -> str:
        now, current = self.clock(), self.snapshot()
        self._samples.append((now, current))
        while len(self._samples) > 2 and now - self._samples[0][0] > WINDOW_SECONDS:
            self._samples.popleft()
        then, old = self._samples[0]
        elapsed = now - then

        def rate(new: int, before: int) -> float:
            return (new - before) / elapsed if elapsed > 0 else 0.0

        if self._catching_up(current):
            text = format_progress(
                rate(current.rows_settled, old.rows_settled),
                rate(current.bytes_settled, old.bytes_settled),
                current.backlog_bytes,
            )
        else:
            spans_per_s = rate(current.delivered, old.delivered)
            text = format_status_line(current, spans_per_s, self.wall_clock(), self.line.width(), self.colour)
        self.line.show(text)
        return text

    def _catching_up(self, current: Progress) -> bool:
        """A large backlog that lasts two samples, while exports succeed: otherwise the status
        line says more (a failing collector, retries) than an ETA would."""
        if current.backlog_bytes < CATCH_UP_BYTES or current.last_error is not None or len(self._samples) < 2:
            return False
        return self._samples[-2][1].backlog_bytes >= CATCH_UP_BYTES

    async def run(self) -> None:
        try:
            while True:
                self.tick()
                await asyncio.sleep(self.interval)
        finally:
            self.line.clear()
