"""Where batches go: the `Sink` protocol every destination implements, the `Outcome` of one
batch (each span delivered, rejected or dead-lettered), and the dry-run sink that prints the
requests instead of sending them."""

from __future__ import annotations

import sys
from typing import NamedTuple, Protocol

from audit_otlp.delivery.batching import Batch
from audit_otlp.mapping.envelope import Envelope


class Outcome(NamedTuple):
    delivered: int = 0
    rejected: int = 0
    dead_lettered: int = 0

    def __add__(self, other: "Outcome") -> "Outcome":  # type: ignore[override]
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
