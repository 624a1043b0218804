"""Where the checkpoint lives on disk: atomic replacement, and a corrupt file moved aside loudly.

Writes go through `state.durable` (temp file, fsync, rename, directory fsync), so a crash leaves
the previous checkpoint or the new one, never a torn one. A corrupt file is moved aside, loudly,
and delivery restarts from the beginning (rows may be sent again: at least once beats loss).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import orjson

from audit_otlp.state.checkpoint import Checkpoint, NewerCheckpointError
from audit_otlp.state.durable import replace_atomically
from audit_otlp.state.migration import read_checkpoint

log = logging.getLogger(__name__)


class CheckpointError(Exception):
    """The checkpoint could not be written (the previous one is intact)."""


class CheckpointStore:
    """The checkpoint file: load (moving a corrupt one aside), check writability, save atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Checkpoint | None:
        """The saved checkpoint; None when there is none or it was corrupt (moved aside)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return read_checkpoint(data)
        except NewerCheckpointError:
            raise  # never moved aside: a newer audit-otlp wrote it, and will want it back
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = self.path
            log.error(
                "CHECKPOINT CORRUPT (%s): moved to %s; delivery restarts from the beginning of the file "
                "(rows may be sent again: at least once beats loss)",
                exc,
                aside,
            )
            return None

    def ensure_writable(self) -> None:
        """Fail early (exit 3) when the checkpoint directory cannot be written."""
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise CheckpointError(f"checkpoint directory {directory} is not writable")

    def save(self, checkpoint: Checkpoint) -> None:
        """Atomically replace the checkpoint; on failure the previous one stays intact."""
        try:
            replace_atomically(self.path, checkpoint.to_json())
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc.strerror or exc}") from exc
