"""Group encoded spans into requests: up to max_spans, max_bytes of body, or max_wait."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from audit_otlp.mapping.envelope import Envelope
from audit_otlp.source.fileid import FileIdentity
from audit_otlp.state.checkpoint import Cursor


class SpanSource(NamedTuple):
    """Where a span came from: for the dead-letter file and receipts."""

    path: Path
    identity: FileIdentity
    offset: int
    line: bytes | None  # the original line (None for an oversize line)
    line_sha256: str
    end: int = -1  # byte offset just after the line's newline (-1: unknown)


@dataclass
class Batch:
    seq: int
    spans: list[bytes]
    sources: list[SpanSource]
    end: Cursor  # the checkpoint position once every span of this batch is settled
    source_bytes: int = 0  # bytes of the audit log this batch accounts for

    def __len__(self) -> int:
        return len(self.spans)


@dataclass
class BatchLimits:
    max_spans: int = 512
    max_bytes: int = 1024 * 1024
    max_wait: float = 0.2


class BatchBuilder:
    """Accumulates spans; the owner asks `fits`, `full` and `deadline`, and takes the batch with `take`."""

    def __init__(self, envelope: Envelope, limits: BatchLimits) -> None:
        self.envelope = envelope
        self.limits = limits  # sets the byte budget too
        self.spans: list[bytes] = []
        self.sources: list[SpanSource] = []
        self._bytes = 0
        self.opened_at: float | None = None  # when the first pending line arrived
        self.source_bytes = 0  # bytes of lines consumed since the last take (set by the reader)

    @property
    def limits(self) -> BatchLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: BatchLimits) -> None:
        """Limits may change while running (SIGHUP); the derived budget follows them."""
        self._limits = limits
        # Body size = envelope + spans + one comma between each two: the span-independent
        # part of the max_bytes test, computed once (fits() runs for every span).
        self._bytes_budget = limits.max_bytes - self.envelope.size(0, 1)

    def __len__(self) -> int:
        return len(self.spans)

    def fits(self, span: bytes) -> bool:
        """Would adding `span` keep the request within the limits? (A lone span always fits.)"""
        count = len(self.spans)
        if not count:
            return True
        return count < self.limits.max_spans and self._bytes + len(span) + count <= self._bytes_budget

    def add(self, span: bytes, source: SpanSource) -> None:
        # orjson hands back bytes objects allocated with much more room than their length
        # (4 KiB and more for a 1.5 KiB span); a batch keeps its spans until they are settled,
        # so keep an exact-size copy (a memcpy, ~0.1 µs) rather than the oversized buffer.
        span = memoryview(span).tobytes()
        self.spans.append(span)
        self.sources.append(source)
        self._bytes += len(span)
        if self.opened_at is None:
            self.opened_at = time.monotonic()

    def touch(self) -> None:
        """A line was consumed (even a blank one): start the max_wait clock."""
        if self.opened_at is None:
            self.opened_at = time.monotonic()

    @property
    def full(self) -> bool:
        return len(self.spans) >= self.limits.max_spans

    def deadline(self) -> float | None:
        return None if self.opened_at is None else self.opened_at + self.limits.max_wait

    def take(self, seq: int, end: Cursor) -> Batch:
        batch = Batch(seq, self.spans, self.sources, end, self.source_bytes)
        self.spans, self.sources, self._bytes, self.opened_at, self.source_bytes = [], [], 0, None, 0
        return batch
