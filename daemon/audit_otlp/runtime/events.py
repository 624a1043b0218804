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
        what = "restarts with GENESIS" if verdict.restart else "breaks"
        log.error(
            "HASH CHAIN %s at line %d (offset %d): expected prev_hash %s, found %s; shipping continues",
            what.upper(),
            line_number,
            offset,
            verdict.expected,
            verdict.found,
        )
