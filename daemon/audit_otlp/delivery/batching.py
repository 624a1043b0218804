"""Group encoded spans into requests: up to max_spans, max_bytes of body, or max_wait."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, overload

if TYPE_CHECKING:  # the mapping helper process imports this module: only what it runs
    from audit_otlp.delivery.encoding import RequestEnvelope
    from audit_otlp.source.fileid import FileIdentity
    from audit_otlp.source.lines import Line
    from audit_otlp.state.checkpoint import Cursor


class SpanSource(NamedTuple):
    """Where a span came from: for the dead-letter file and receipts."""

    path: Path
    identity: FileIdentity
    offset: int
    line: bytes | None  # the original line (None for an oversize line)
    line_sha256: str
    end: int = -1  # byte offset just after the line's newline (-1: unknown)


class _Run(NamedTuple):
    path: Path
    identity: FileIdentity
    lines: Sequence[Line]
    span_lines: Sequence[int]  # for each span of the run, the index of its line in `lines`


class SpanSources(Sequence[SpanSource]):
    """Where each span of a batch came from, made only when asked (a dead letter, a receipt):
    the reader records one run of spans per chunk, not a record per span."""

    def __init__(self) -> None:
        self._starts: list[int] = []  # index of each run's first span
        self._runs: list[_Run | SpanSource] = []
        self._count = 0

    def add_run(self, path: Path, identity: FileIdentity, lines: Sequence[Line], span_lines: Sequence[int]) -> None:
        if span_lines:
            self._starts.append(self._count)
            self._runs.append(_Run(path, identity, lines, span_lines))
            self._count += len(span_lines)

    def append(self, source: SpanSource) -> None:
        self._starts.append(self._count)
        self._runs.append(source)
        self._count += 1

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> SpanSource: ...
    @overload
    def __getitem__(self, index: slice) -> list[SpanSource]: ...
    def __getitem__(self, index: int | slice) -> SpanSource | list[SpanSource]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        at = bisect.bisect_right(self._starts, index) - 1
        run = self._runs[at]
        if isinstance(run, SpanSource):
            return run
        line = run.lines[run.span_lines[index - self._starts[at]]]
        return SpanSource(run.path, run.identity, line.offset, line.data, line.digest.hex(), line.end)

    def __iter__(self) -> Iterator[SpanSource]:
        return (self[i] for i in range(self._count))


@dataclass
class Batch:
    seq: int
    spans: list[bytes]
    sources: Sequence[SpanSource]
    end: Cursor  # the checkpoint position once every span of this batch is settled
    source_bytes: int = 0  # bytes of the audit log this batch accounts for

    def __len__(self) -> int:
        return len(self.spans)


@dataclass
class BatchLimits:
    max_spans: int = 512
    max_bytes: int = 1024 * 1024
    max_wait: float = 0.2


class SpanBudget:
    """The arithmetic of a request's limits: how many spans and body bytes are taken so far, and
    whether one more span fits. The batch builder keeps one; a mapping helper process keeps its
    own to cut batches where the builder would (docs/design.md, "Mapping on the second core")."""

    def __init__(self, envelope: RequestEnvelope, limits: BatchLimits) -> None:
        self.envelope = envelope
        self.count = 0
        self.bytes = 0
        self.limits = limits  # sets the byte budget too

    @property
    def limits(self) -> BatchLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: BatchLimits) -> None:
        """Limits may change while running (SIGHUP); the derived budget follows them."""
        self._limits = limits
        # Body size = envelope + spans + one comma between each two (JSON; protobuf has none):
        # the span-independent part of the max_bytes test, computed once (fits() runs for every
        # span). The envelope's share is taken at a full body: protobuf's length prefixes grow.
        self._bytes_budget = 2 * limits.max_bytes - self.envelope.size(limits.max_bytes, 1)

    def fits(self, size: int) -> bool:
        """Would a span of `size` bytes keep the request within the limits? (A lone span always fits.)"""
        count = self.count
        if not count:
            return True
        return count < self._limits.max_spans and self.bytes + size + count <= self._bytes_budget

    def take(self, size: int) -> None:
        self.count += 1
        self.bytes += size

    @property
    def full(self) -> bool:
        return self.count >= self._limits.max_spans

    def reset(self) -> None:
        self.count = self.bytes = 0


class BatchBuilder:
    """Accumulates spans; the owner asks `fits`, `full` and `deadline`, and takes the batch with `take`."""

    def __init__(self, envelope: RequestEnvelope, limits: BatchLimits) -> None:
        self.envelope = envelope
        self.budget = SpanBudget(envelope, limits)
        self.spans: list[bytes] = []
        self.sources = SpanSources()
        self.opened_at: float | None = None  # when the first pending line arrived
        self.source_bytes = 0  # bytes of lines consumed since the last take (set by the reader)

    @property
    def limits(self) -> BatchLimits:
        return self.budget.limits

    @limits.setter
    def limits(self, limits: BatchLimits) -> None:
        self.budget.limits = limits

    def __len__(self) -> int:
        return len(self.spans)

    def fits(self, span: bytes) -> bool:
        """Would adding `span` keep the request within the limits? (A lone span always fits.)"""
        return self.budget.fits(len(span))

    def add(self, span: bytes, source: SpanSource) -> None:
        """`span` is kept until settled: pass an exact-size bytes (orjson's output is not)."""
        self.spans.append(span)
        self.sources.append(source)
        self.budget.take(len(span))
        if self.opened_at is None:
            self.opened_at = time.monotonic()

    def add_run(
        self, spans: Sequence[bytes], path: Path, identity: FileIdentity, lines: Sequence[Line], span_lines: Sequence[int]
    ) -> None:
        """Spans of consecutive lines of one file (`span_lines`: each one's index in `lines`)."""
        if not spans:
            return
        self.spans.extend(spans)
        self.sources.add_run(path, identity, lines, span_lines)
        budget = self.budget
        budget.count += len(spans)
        budget.bytes += sum(map(len, spans))
        if self.opened_at is None:
            self.opened_at = time.monotonic()

    def touch(self) -> None:
        """A line was consumed (even a blank one): start the max_wait clock."""
        if self.opened_at is None:
            self.opened_at = time.monotonic()

    @property
    def full(self) -> bool:
        return self.budget.full

    def deadline(self) -> float | None:
        return None if self.opened_at is None else self.opened_at + self.limits.max_wait

    def take(self, seq: int, end: Cursor) -> Batch:
        batch = Batch(seq, self.spans, self.sources, end, self.source_bytes)
        self.spans, self.sources, self.opened_at, self.source_bytes = [], SpanSources(), None, 0
        self.budget.reset()
        return batch
