"""The mapping stage: lines of the audit log -> encoded spans, in file order.

It owns the state that follows the stream rather than one row: the hash chain (carried across
rotations and, through the checkpoint, across restarts) and the line count. The per-row work
is the pure functions of `mapping` and `chain`.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Protocol

from audit_otlp.mapping.chain import GENESIS, ChainHasher, ChainState, ChainVerdict, verify_row
from audit_otlp.mapping.envelope import encode_span
from audit_otlp.mapping.ids import MappingOptions
from audit_otlp.mapping.parse import parse_line
from audit_otlp.mapping.spans import chain_broken_span, kv, malformed_span, row_span
from audit_otlp.source.lines import Line

log = logging.getLogger(__name__)


class RowEvents(Protocol):
    def malformed_line(self, reason: str) -> None: ...
    def chain_break(self, verdict: ChainVerdict, offset: int, line_number: int) -> None: ...


class MappedLine(NamedTuple):  # one per line: a NamedTuple is the cheapest record to build
    spans: list[bytes]  # usually one; a chain break adds its evidence span; blank lines none
    digest: bytes  # SHA-256 of the line


class RowMapper:
    def __init__(
        self,
        options: MappingOptions,
        hasher: ChainHasher | None,
        chain_state: ChainState,
        events: RowEvents,
        line_number: int = 0,
        source: str | None = None,
    ) -> None:
        self.options = options
        self.hasher = hasher  # None: chain verification is off
        self.chain = chain_state
        self.events = events
        self.line_number = line_number
        self.gap: str | None = None  # the next row is the first after a resume gap
        # With several audit logs, every span names the file it came from (`audit.source`).
        self._source = kv("audit.source", source) if source is not None else None

    def _encode(self, span: dict[str, Any]) -> bytes:
        if self._source is not None:
            span["attributes"].append(self._source)
        return encode_span(span)

    def mark_gap(self, reason: str) -> None:
        """The rows before the next one vanished unseen: it carries verdict `gap` (not a break),
        and the chain goes on from it (nothing before it can be compared)."""
        self.gap = reason
        self.chain.last_hash = None
        self.chain.last_broken = False

    def links(self, data: bytes) -> bool | None:
        """Does this line's prev_hash name the last row mapped? None when that cannot be told
        (chain verification off, no row yet, no prev_hash): how the source tells a version that
        grew and vanished while the daemon was stopped (rows missing) from one that did not."""
        last = self.chain.last_hash
        if self.hasher is None or last is None:
            return None
        row, _ = parse_line(data)
        prev = row.get("prev_hash") if isinstance(row, dict) else None
        return prev == last if isinstance(prev, str) and prev != GENESIS else None  # a new chain proves nothing

    def map_line(self, line: Line, observed_ns: int) -> MappedLine:
        self.line_number += 1
        data = line.data
        if data is None:  # longer than source.max_line_bytes
            digest = line.digest
            self.events.malformed_line("line_too_long")
            return MappedLine(
                [
                    self._encode(
                        malformed_span(
                            offset=line.offset, length=line.length, digest=digest, reason="line_too_long", observed_ns=observed_ns
                        )
                    )
                ],
                digest,
            )
        digest = line.digest  # hashed once, by the splitter
        if not data.strip():
            return MappedLine([], digest)
        row, reason = parse_line(data)
        if row is None:
            assert reason is not None
            self.events.malformed_line(reason)
            return MappedLine(
                [
                    self._encode(
                        malformed_span(
                            offset=line.offset, length=len(data), digest=digest, reason=reason, observed_ns=observed_ns
                        )
                    )
                ],
                digest,
            )
        verdict = verify_row(self.chain, row, self.hasher, data) if self.hasher is not None else None
        gap, self.gap = self.gap is not None, None
        if gap and verdict is not None:
            verdict = verdict._replace(verified=False, gap=True, anchor=False)
        span = row_span(row, digest, offset=line.offset, observed_ns=observed_ns, options=self.options, chain=verdict, gap=gap)
        spans = [self._encode(span)]
        if verdict is not None and (verdict.broken or verdict.restart):
            self.events.chain_break(verdict, line.offset, self.line_number)
            spans.append(
                self._encode(
                    chain_broken_span(
                        verdict=verdict,
                        offset=line.offset,
                        line_number=self.line_number,
                        digest=digest,
                        start_ns=int(span["startTimeUnixNano"]),
                    )
                )
            )
        return MappedLine(spans, digest)
