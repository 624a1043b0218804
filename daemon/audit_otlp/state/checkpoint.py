"""The checkpoint: one explicit, versioned record of where delivery stands.

It names the file (path and identity), the byte offset of the first row not yet delivered (or
dead-lettered), the SHA-256 and length of the last delivered line (so a restart can check the
offset still points where it did, and find the row by content after a tail-rewrite), and the
hash chain's state. Writes are atomic: temp file in the same directory, fsync, rename, fsync the
directory. A corrupt file is moved aside, loudly, and delivery restarts from the beginning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from audit_otlp.source.fileid import FileIdentity
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.runstate import RunState

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """The checkpoint could not be written (the previous one is intact)."""


@dataclass(frozen=True)
class Cursor:
    """A position in the audit log just after a line: what the checkpoint records."""

    path: str
    identity: FileIdentity | None
    offset: int
    last_line_sha256: str | None = None
    last_line_length: int | None = None
    chain_last_hash: str | None = None  # hash of the last row, which the next row's prev_hash must equal
    line_number: int = 0  # rows read from this file before `offset` (0 when unknown)
    # What the mapping stage needs to judge and name the next lines as it would have without a
    # restart: recent link hashes (forks) and the history length (mapping/chain.py), and the
    # recent line digests, hex, that tell identical lines apart (mapping/ids.py).
    chain_recent: tuple[str, ...] = ()
    chain_seen: int = 0
    recent_digests: tuple[str, ...] = ()


@dataclass(frozen=True)
class Checkpoint:
    cursor: Cursor
    delivered_spans: int = 0  # spans acknowledged with 2xx, all time, minus rejected
    last_success_unix: float | None = None
    last_error: str | None = None
    chain_breaks: int = 0
    updated_unix: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        cursor = asdict(self.cursor)
        cursor["identity"] = self.cursor.identity.to_json() if self.cursor.identity else None
        doc = {
            "version": FORMAT_VERSION,
            "path": cursor.pop("path"),
            "file": cursor.pop("identity"),
            "offset": cursor.pop("offset"),
            "last_line_sha256": cursor.pop("last_line_sha256"),
            "last_line_length": cursor.pop("last_line_length"),
            "line_number": cursor.pop("line_number"),
            "chain": {"last_hash": cursor.pop("chain_last_hash"), "breaks": self.chain_breaks,
                      "recent": cursor.pop("chain_recent"), "seen": cursor.pop("chain_seen")},
            "recent_digests": cursor.pop("recent_digests"),
            "delivered_spans": self.delivered_spans,
            "last_success_unix": self.last_success_unix,
            "last_error": self.last_error,
            "updated_unix": self.updated_unix,
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> "Checkpoint":
        doc = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported checkpoint version {doc.get('version') if isinstance(doc, dict) else None!r}")
        offset = doc["offset"]
        if not isinstance(offset, int) or offset < 0:
            raise ValueError("offset must be a non-negative integer")
        chain = doc.get("chain") or {}
        cursor = Cursor(
            path=str(doc["path"]),
            identity=FileIdentity.from_json(doc["file"]) if doc.get("file") else None,
            offset=offset,
            last_line_sha256=doc.get("last_line_sha256"),
            last_line_length=doc.get("last_line_length"),
            chain_last_hash=chain.get("last_hash"),
            line_number=int(doc.get("line_number") or 0),
            # Absent from checkpoints written before forks and identical lines were told apart.
            chain_recent=tuple(str(h) for h in chain.get("recent") or ()),
            chain_seen=int(chain.get("seen") or 0),
            recent_digests=tuple(str(d) for d in doc.get("recent_digests") or ()),
        )
        return cls(
            cursor=cursor,
            delivered_spans=int(doc.get("delivered_spans") or 0),
            last_success_unix=doc.get("last_success_unix"),
            last_error=doc.get("last_error"),
            chain_breaks=int(chain.get("breaks") or 0),
            updated_unix=float(doc.get("updated_unix") or 0.0),
        )

    def with_cursor(self, cursor: Cursor, **changes: Any) -> "Checkpoint":
        return replace(self, cursor=cursor, updated_unix=time.time(), **changes)


class CheckpointStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Checkpoint | None:
        """The saved checkpoint; None when there is none or it was corrupt (moved aside)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return Checkpoint.from_json(data)
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
        data = checkpoint.to_json()
        directory = self.path.parent
        tmp = directory / f".{self.path.name}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc.strerror or exc}") from exc


class CheckpointKeeper:
    """Holds the latest settled position and writes it soon after it moves: at once when the last
    write is older than `interval`, else once the interval has passed (writes are coalesced, and
    a quiet daemon does not wake up at all). Also written at exit."""

    def __init__(self, store: CheckpointStore, initial: Checkpoint, interval: float, metrics: Metrics,
                 state: RunState, enabled: bool) -> None:
        self.store = store
        self.current = initial
        self.interval = interval
        self.metrics = metrics
        self.state = state
        self.enabled = enabled
        self._dirty = asyncio.Event()
        self._writing: asyncio.Future[None] | None = None

    def advance(self, frontier: Cursor | None, delivered: int, rejected: int, chain_breaks: int) -> None:
        """A batch was settled: `frontier` is the new position if it moved."""
        changes: dict[str, object] = {"chain_breaks": chain_breaks}
        if delivered or rejected:
            changes["delivered_spans"] = self.current.delivered_spans + delivered
            changes["last_success_unix"] = self.state.last_success_unix
        changes["last_error"] = self.state.last_error
        self.current = self.current.with_cursor(frontier or self.current.cursor, **changes)
        self._dirty.set()

    async def flush(self) -> bool:
        # One writer of the temp file at a time: a write the run task started (and that was
        # cancelled at shutdown) is waited for, never raced.
        if self._writing is not None and not self._writing.done():
            try:
                await asyncio.shield(self._writing)
            except CheckpointError:
                pass  # reported by its own caller; the state is still dirty
        if not (self.enabled and self._dirty.is_set()):
            return True
        snapshot = self.current
        self._dirty.clear()
        self._writing = asyncio.ensure_future(asyncio.to_thread(self.store.save, snapshot))
        try:
            await asyncio.shield(self._writing)
        except asyncio.CancelledError:
            self._dirty.set()  # the waiter was cancelled (shutdown): the final flush writes again
            raise
        except CheckpointError as exc:
            self._dirty.set()
            self.metrics.checkpoint_errors.inc()
            if self.state.checkpoint_error is None:
                log.error("%s; the previous checkpoint is intact, retrying", exc)
            self.state.checkpoint_error = str(exc)
            return False
        if self.state.checkpoint_error is not None:
            log.info("checkpoint writes work again")
        self.state.checkpoint_error = None
        return True

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            await self.flush()
            await asyncio.sleep(self.interval)  # coalesce: at most one write per interval
