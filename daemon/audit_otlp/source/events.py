"""What the source reports (rotations, resume gaps, rotated files held, spooled versions): a
protocol the runtime implements with log lines, metrics and checkpoint writes, so that the
source never names a metric."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from audit_otlp.source.spool import SpoolRecord

log = logging.getLogger(__name__)


class SourceEvents(Protocol):
    """What the tailer reports; the app turns these into log lines and metrics."""

    def rotation(self, kind: str, path: Path) -> None: ...
    def resume_gap(self, reason: str) -> None: ...
    def held_files(self, count: int, pending_bytes: int) -> None: ...
    def spooled(self, path: Path, record: SpoolRecord) -> None: ...
    def spool_failed(self, path: Path, reason: str) -> None: ...


class LogOnlyEvents:
    def rotation(self, kind: str, path: Path) -> None:
        log.info("rotation detected (%s): %s", kind, path)

    def resume_gap(self, reason: str) -> None:
        log.error("RESUME GAP: %s", reason)

    def held_files(self, count: int, pending_bytes: int) -> None:
        pass

    def spooled(self, path: Path, record: SpoolRecord) -> None:
        log.warning("%s vanished with %d bytes not delivered: spooled", path, record.kept_bytes)

    def spool_failed(self, path: Path, reason: str) -> None:
        log.error("%s vanished and could not be spooled: %s", path, reason)
