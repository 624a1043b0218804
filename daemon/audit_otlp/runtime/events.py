"""What the source and mapping stages report, turned into log lines, metrics and live state: the
adapters behind the `SourceEvents` and `RowEvents` protocols (so neither stage names a metric)."""

from __future__ import annotations

import logging
from pathlib import Path

from audit_otlp.mapping.chain import ChainVerdict
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.runstate import RunState
from audit_otlp.source.spool import SpoolRecord
from audit_otlp.state.keeper import CheckpointKeeper

log = logging.getLogger("audit_otlp")


class SourceObserver:
    """One per audit log followed (`path`: its name in the checkpoint)."""

    def __init__(self, metrics: Metrics, path: str, keeper: CheckpointKeeper | None = None) -> None:
        self.metrics = metrics
        self.path = path
        self.keeper = keeper

    def rotation(self, kind: str, path: Path) -> None:
        self.metrics.rotations.labels(kind=kind).inc()
        log.info("rotation detected (%s) on %s", kind, path)

    def resume_gap(self, reason: str) -> None:
        """Rows vanished unseen: said once, here (the first row after them says `gap`)."""
        self.metrics.resume_gaps.inc()
        if self.keeper is not None:
            self.keeper.gap(self.path, reason)
        log.error("RESUME GAP: %s", reason)

    def held_files(self, count: int, pending_bytes: int) -> None:
        self.metrics.rotated_files_held.set(count)
        self.metrics.rotated_bytes_pending.set(pending_bytes)

    def spooled(self, path: Path, record: SpoolRecord) -> None:
        self.metrics.spooled_bytes.inc(record.kept_bytes)
        if self.keeper is not None:
            self.keeper.nudge()  # the checkpoint names the spool file from now on
        log.warning(
            "%s vanished from disk with %d bytes not delivered: kept them in the spool (%s)", path, record.kept_bytes, record.name
        )
        if record.cut_bytes:
            self.metrics.spool_cut_bytes.inc(record.cut_bytes)
            if self.keeper is not None:
                self.keeper.spool_cut(self.path, record.cut_bytes, record.lines_cut)
            log.error(
                "SPOOL FULL: source.spool_max_bytes reached; bytes %d-%d of %s (%d lines) are not kept: "
                "they are still read from the open file, but a crash before they are delivered loses them",
                record.end,
                record.size,
                path,
                record.lines_cut,
            )

    def spool_failed(self, path: Path, reason: str) -> None:
        self.metrics.spool_errors.inc()
        log.error(
            "%s vanished from disk and its undelivered rows could not be spooled (%s): they are still read from "
            "the open file, but a crash before they are delivered loses them; retrying",
            path,
            reason,
        )


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
