"""What the pipeline hands batches to: the `Sink` protocol, its `Outcome`, and the dry-run sink.

The pipeline knows only this protocol, so `--dry-run` (print the requests) and the real
exporter (`delivery.policy.Exporter`) are interchangeable, as httpx's transports are.
"""

from __future__ import annotations

import sys
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


class Sink(Protocol):
    async def start(self) -> None: ...
    async def deliver(self, batch: Batch) -> Outcome: ...
    async def aclose(self) -> None: ...


class DryRunSink:
    """--dry-run: print each request body as one line on stdout; nothing is delivered."""

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope

    async def start(self) -> None:
        pass

    async def deliver(self, batch: Batch) -> Outcome:
        if batch.spans:
            sys.stdout.buffer.write(self.envelope.body(batch.spans) + b"\n")
            sys.stdout.buffer.flush()
        return Outcome()

    async def aclose(self) -> None:
        pass
