"""What the pipeline hands batches to: the `Sink` protocol, its `Outcome`, and the dry-run sink.

The pipeline knows only this protocol, so `--dry-run` (print the requests) and the real
exporter (`delivery.policy.Exporter`) are interchangeable, as httpx's transports are.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NamedTuple, Protocol

from audit_otlp.delivery.batching import Batch
from audit_otlp.mapping.envelope import Envelope


class Outcome(NamedTuple):
    """How the spans of one batch were settled (the three counts add up to its length)."""

    delivered: int = 0
    rejected: int = 0
    dead_lettered: int = 0

    def __add__(self, other: Outcome) -> Outcome:  # type: ignore[override]
        return Outcome(self.delivered + other.delivered, self.rejected + other.rejected, self.dead_lettered + other.dead_lettered)


class Abandoned(Exception):
    """`deliver()` gave a batch up at shutdown before any collector accepted it: nothing of it was
    settled, so the checkpoint stays before it and the next run sends it again."""


class Sink(Protocol):
    async def start(self) -> None: ...
    async def deliver(self, batch: Batch) -> Outcome: ...
    def stop_retrying(self) -> None:
        """Shutdown has begun: give up (raise `Abandoned`) instead of waiting to retry or starting a
        new request; a request already on the wire may still finish."""

    async def aclose(self) -> None: ...


class DryRunSink:
    """--dry-run: print each request body as one line on stdout; nothing is delivered. When the
    reader of stdout goes away (`run --dry-run | head -1`), `on_output_closed` stops the daemon."""

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self.on_output_closed: Callable[[], None] = lambda: None

    async def start(self) -> None:
        pass

    async def deliver(self, batch: Batch) -> Outcome:
        if batch.spans:
            try:
                sys.stdout.buffer.write(self.envelope.body(batch.spans) + b"\n")
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                silence_stdout()
                self.on_output_closed()
                raise Abandoned from None
        return Outcome()

    def stop_retrying(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def silence_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone, so that the interpreter's own flush at
    exit does not fail a second time (the recipe of the Python documentation, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
