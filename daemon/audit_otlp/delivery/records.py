"""Append-only NDJSON records that must be on disk before the checkpoint moves: the dead-letter
file (rows a collector refused for good) and the delivery receipts (one record per 2xx)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson

BODY_LIMIT = 4096


class DurableLog:
    """Appends NDJSON records and fsyncs them; writes happen in a worker thread.

    `append` returns only once the records are on stable storage (file fsynced, and the
    directory too when the file was just created), which is what lets the checkpoint move.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def _append(self, records: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # the new directory entry must survive a crash too
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    async def append(self, records: list[dict[str, Any]]) -> None:
        """Durably append; raises OSError (the caller retries, the checkpoint stays put)."""
        async with self._lock:
            await asyncio.to_thread(self._append, records)

    def last_record(self) -> dict[str, Any] | None:
        """The last complete record (for `status`), reading only the file's tail."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(size - 65536, 0))
                tail = fh.read()
        except OSError:
            return None
        for line in reversed(tail.splitlines()):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                return record
        return None


def truncate_body(body: bytes) -> str:
    text = body[:BODY_LIMIT].decode("utf-8", "replace")
    return text + ("...[truncated]" if len(body) > BODY_LIMIT else "")
