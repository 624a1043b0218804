"""The mapping stage: lines of the audit log -> encoded spans, in file order.

It owns the state that follows the stream rather than one row: the hash chain (carried across
rotations and, through the checkpoint, across restarts), the window of recent line digests that
tells identical lines apart, and the line count. The per-row work is the pure functions of
`spans`, `evidence` and `chain`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from audit_otlp.mapping.chain import (
    BREAK,
    FORK,
    GENESIS,
    RESTART,
    ChainHasher,
    ChainJudge,
    ChainState,
    ChainVerdict,
    unparsed_link,
)
from audit_otlp.mapping.envelope import encode_span
from audit_otlp.mapping.evidence import chain_broken_span, malformed_span
from audit_otlp.mapping.ids import IdentityWindow, MappingOptions
from audit_otlp.mapping.parse import parse_line
from audit_otlp.mapping.spans import kv, row_span
from audit_otlp.source.lines import Line

log = logging.getLogger(__name__)

KEYED_NOTE = (
    "this chain looks keyed; no key configured: its links do not match plain SHA-256, so it cannot be "
    "verified (give the key with AUDIT_OTLP_CHAIN_KEY or chain.key_file, or let the daemon read the "
    "producer's hmac-key.bin beside the audit log); shipping continues without chain verification"
)


class RowEvents(Protocol):
    def malformed_line(self, reason: str) -> None: ...
    def chain_break(self, verdict: ChainVerdict, offset: int, line_number: int) -> None: ...
    def chain_fork(self) -> None: ...
    def chain_note(self, message: str) -> None: ...


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
        identity: IdentityWindow | None = None,
        encode: Callable[[Mapping[str, Any]], bytes] = encode_span,
        source: str | None = None,
    ) -> None:
        if source is not None:  # several audit logs: every span names the file it came from
            encode = _naming_source(encode, kv("audit.source", source))
        self.encode = encode  # span dict -> request bytes: OTLP/JSON, or protobuf (export.protocol)
        self.gap: str | None = None  # the next row is the first after a resume gap (why)
        self.options = options
        self.hasher = hasher  # None: chain verification is off (or was suspended: keyed chain, no key)
        self.chain = chain_state
        self.events = events
        self.line_number = line_number
        self.identity = identity or IdentityWindow()
        self.judge = ChainJudge(chain_state, hasher) if hasher is not None else None

    def mark_gap(self, reason: str) -> None:
        """The rows before the next one vanished unseen: its verdict is `gap` (not a break), it
        carries `audit.resume_gap`, and the chain goes on from it."""
        self.gap = reason
        self.chain.mark_gap()

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

    def map_line(self, line: Line, observed_ns: int, link_hash: str | None = None) -> MappedLine:
        """`link_hash`: the line's chain hash, when another process already worked it out
        (`link_hashes`; the mapping helper's daemon does, to share a catch-up's work)."""
        self.line_number += 1
        encode = self.encode
        data = line.data
        if data is None:  # longer than source.max_line_bytes: its link cannot be hashed
            digest = line.digest
            self.events.malformed_line("line_too_long")
            occurrence = self.identity.occurrence(digest)
            if self.hasher is not None:
                self.chain.last_hash = None  # the next line is checked against nothing we know
            return MappedLine(
                [
                    encode(
                        malformed_span(
                            offset=line.offset,
                            length=line.length,
                            digest=digest,
                            reason="line_too_long",
                            observed_ns=observed_ns,
                            occurrence=occurrence,
                        )
                    )
                ],
                digest,
            )
        digest = line.digest  # hashed once, by the splitter
        if not data.strip():
            return MappedLine([], digest)
        occurrence = self.identity.occurrence(digest)
        row, reason = parse_line(data)
        if row is None:
            assert reason is not None
            self.events.malformed_line(reason)
            verdict = (
                self._judge(None, unparsed_link(self.hasher, data, reason == "too_deep"), line.offset, data)
                if self.hasher
                else None
            )
            return MappedLine(
                [
                    encode(
                        malformed_span(
                            offset=line.offset,
                            length=len(data),
                            digest=digest,
                            reason=reason,
                            observed_ns=observed_ns,
                            chain=verdict,
                            occurrence=occurrence,
                        )
                    )
                ],
                digest,
            )
        verdict = (
            self._judge(row.get("prev_hash"), link_hash or self.hasher.line_hash(data, row), line.offset, data)
            if self.hasher is not None
            else None
        )
        gap, self.gap = self.gap is not None, None
        span = row_span(
            row,
            digest,
            offset=line.offset,
            observed_ns=observed_ns,
            options=self.options,
            chain=verdict,
            occurrence=occurrence,
            gap=gap,
        )
        spans = [encode(span)]
        if verdict is not None and verdict.verdict == BREAK:
            self.events.chain_break(verdict, line.offset, self.line_number)
            spans.append(
                encode(
                    chain_broken_span(
                        verdict=verdict,
                        offset=line.offset,
                        line_number=self.line_number,
                        digest=digest,
                        start_ns=int(span["startTimeUnixNano"]),
                        occurrence=occurrence,
                    )
                )
            )
        elif verdict is not None and verdict.verdict == RESTART:
            self.events.chain_note(
                f"HASH CHAIN RESTARTS WITH GENESIS at line {self.line_number} (offset {line.offset}): "
                "a new chain begins (the producer lost its file, or another one writes here)"
            )
        return MappedLine(spans, digest)

    def _judge(self, found: object, link_hash: str, offset: int, data: bytes) -> ChainVerdict | None:
        assert self.judge is not None
        verdict = self.judge.judge(found, link_hash, offset, data)
        if verdict.verdict == FORK:
            self.events.chain_fork()
        if self.judge.looks_keyed:
            self.hasher = self.judge = None  # one warning, then no chain attributes at all
            self.events.chain_note(KEYED_NOTE)
            return None
        return verdict


def link_hashes(hasher: ChainHasher, lines: list[Line]) -> list[str | None]:
    """The chain hash of each line that is a JSON object (None for any other), as map_line would
    work it out: one implementation, so the two processes of a catch-up hash alike."""
    hashes: list[str | None] = []
    for line in lines:
        row = parse_line(line.data)[0] if line.data is not None and line.data.strip() else None
        hashes.append(hasher.line_hash(line.data, row) if row is not None and line.data is not None else None)
    return hashes


def _naming_source(
    encode: Callable[[Mapping[str, Any]], bytes], attribute: dict[str, Any]
) -> Callable[[Mapping[str, Any]], bytes]:
    def encode_naming_source(span: Mapping[str, Any]) -> bytes:
        span["attributes"].append(attribute)
        return encode(span)

    return encode_naming_source
