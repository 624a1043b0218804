"""What the source reports (rotations, resume gaps, rotated files held): a protocol the runtime
implements with log lines and metrics, so that the source never names a metric."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class SourceEvents(Protocol):
    """What the tailer reports; the app turns these into log lines and metrics."""

    def rotation(self, kind: str, path: Path) -> None: ...
    def resume_gap(self, reason: str) -> None: ...
    def held_files(self, count: int, pending_bytes: int) -> None: ...


class LogOnlyEvents:
    def rotation(self, kind: str, path: Path) -> None:
        log.info("rotation detected (%s): %s", kind, path)

    def resume_gap(self, reason: str) -> None:
        log.error("RESUME GAP: %s; reading the current file from its beginning", reason)

    def held_files(self, count: int, pending_bytes: int) -> None:
        pass
