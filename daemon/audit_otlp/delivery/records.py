"""Dead-letter and receipt records: what they say, and appending them durably before the
checkpoint moves (the dead-letter file holds rows a collector refused for good; the receipts
file one record per 2xx)."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from audit_otlp.delivery.batching import SpanSource
from audit_otlp.delivery.ratelimit import LOUD_EVERY, RateLimitedLog
from audit_otlp.delivery.retry import Backoff
from audit_otlp.state.durable import append_durably

BODY_LIMIT = 4096


class DurableLog:
    """Appends NDJSON records and fsyncs them; the writes run in aiofiles' worker threads.

    `append` returns only once the records are on stable storage (file fsynced, and the
    directory too when the file was just created), which is what lets the checkpoint move.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    async def append(self, records: list[dict[str, Any]]) -> None:
        """Durably append; raises OSError (the caller retries, the checkpoint stays put)."""
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        async with self._lock:
            await append_durably(self.path, data)

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


def dead_letter_record(
    source: SpanSource, endpoint_host: str, status: int | None, response: bytes, reason: str
) -> dict[str, Any]:
    """One refused row: where it was, the collector's answer, and the line itself."""
    record: dict[str, Any] = {
        "time": _now_iso(),
        "reason": reason,
        "endpoint_host": endpoint_host,
        "status": status,
        "response": truncate_body(response),
        "path": str(source.path),
        "file": source.identity.to_json(),
        "offset": source.offset,
        "end": source.end if source.end >= 0 else None,
        "line_sha256": source.line_sha256,
    }
    if source.line is None:
        record["line"] = None  # oversize line: its content was never held
    else:
        try:
            record["line"] = source.line.decode("utf-8")
        except UnicodeDecodeError:
            record["line_base64"] = base64.b64encode(source.line).decode("ascii")
    return record


def receipt_record(sources: Sequence[SpanSource], endpoint_host: str, status: int, rejected: int) -> dict[str, Any]:
    """One 2xx: which bytes of which file(s) the collector acknowledged."""
    first, last = sources[0], sources[-1]
    same_file = last.identity == first.identity
    return {
        "time": _now_iso(),
        "endpoint_host": endpoint_host,
        "status": status,
        "spans": len(sources),
        "rejected": rejected,
        "path": str(first.path),
        "file": first.identity.to_json(),
        # [offset of the first line, end of the last line): in `file`, or ending in `last_file`
        "byte_range": [first.offset, _line_end(last)],
        "last_path": None if same_file else str(last.path),
        "last_file": None if same_file else last.identity.to_json(),
        "first_line_sha256": first.line_sha256,
        "last_line_sha256": last.line_sha256,
    }


async def append_until_written(
    target: DurableLog,
    records: list[dict[str, Any]],
    backoff: Backoff,
    sleep: Callable[[float], Awaitable[None]],
    errors: RateLimitedLog,
) -> None:
    """Retry until the records are on disk: the checkpoint must not move before that."""
    while True:
        try:
            await target.append(records)
            return
        except OSError as exc:
            errors.log(
                f"write:{target.path}",
                LOUD_EVERY,
                logging.ERROR,
                f"cannot write {target.path}: {exc.strerror or exc}; retrying (the checkpoint waits)",
            )
            await sleep(backoff.next_delay())


def _line_end(source: SpanSource) -> int:
    if source.end >= 0:
        return source.end
    return source.offset + (len(source.line) + 1 if source.line is not None else 0)


def _now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
