"""What the source and mapping stages report, turned into log lines, metrics and live state: the
adapters behind the `SourceEvents` and `RowEvents` protocols (so neither stage names a metric)."""

from __future__ import annotations

import logging
from pathlib import Path

from audit_otlp.mapping.chain import ChainVerdict
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.runstate import RunState

log = logging.getLogger("audit_otlp")


class SourceObserver:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def rotation(self, kind: str, path: Path) -> None:
        self.metrics.rotations.labels(kind=kind).inc()
        log.info("rotation detected (%s) on %s", kind, path)

    def resume_gap(self, reason: str) -> None:
        self.metrics.resume_gaps.inc()
        log.error("RESUME GAP: %s; reading the current file from its beginning (rows between may be missing)", reason)

    def held_files(self, count: int, pending_bytes: int) -> None:
        self.metrics.rotated_files_held.set(count)
        self.metrics.rotated_bytes_pending.set(pending_bytes)


class RowObserver:
    def __init__(self, metrics: Metrics, state: RunState) -> None:
        self.metrics = metrics
        self.state = state

    def malformed_line(self, reason: str) -> None:
        self.metrics.malformed_lines.labels(reason=reason).inc()

    def chain_break(self, verdict: ChainVerdict, offset: int, line_number: int) -> None:
        self.state.chain_breaks += 1
        log.error(
            "HASH CHAIN BREAKS at line %d (offset %d): prev_hash %s names no line we know (the line before "
            "hashes to %s); shipping continues",
            line_number,
            offset,
            verdict.found,
            verdict.expected,
        )

    def chain_fork(self) -> None:
        self.state.chain_forks += 1

    def chain_note(self, message: str) -> None:
        log.warning("%s", message)
