"""The checkpoint: one explicit, versioned record of where delivery stands, and its JSON form.

It names the file (path and identity), the byte offset of the first row not yet delivered (or
dead-lettered), the SHA-256 and length of the last delivered line (so a restart can check the
offset still points where it did, and find the row by content after a tail-rewrite), and the
hash chain's state. `FORMAT_VERSION` tags the on-disk form; a change that older readers cannot
read needs a new version (and a migration), never a silent reinterpretation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from audit_otlp.source.fileid import FileIdentity

FORMAT_VERSION = 1


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


@dataclass(frozen=True)
class Checkpoint:
    """What survives a crash: the cursor, plus the counters `status` reads without the daemon."""

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
            "chain": {"last_hash": cursor.pop("chain_last_hash"), "breaks": self.chain_breaks},
            "delivered_spans": self.delivered_spans,
            "last_success_unix": self.last_success_unix,
            "last_error": self.last_error,
            "updated_unix": self.updated_unix,
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Checkpoint:
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
        )
        return cls(
            cursor=cursor,
            delivered_spans=int(doc.get("delivered_spans") or 0),
            last_success_unix=doc.get("last_success_unix"),
            last_error=doc.get("last_error"),
            chain_breaks=int(chain.get("breaks") or 0),
            updated_unix=float(doc.get("updated_unix") or 0.0),
        )

    def with_cursor(self, cursor: Cursor, **changes: Any) -> Checkpoint:
        return replace(self, cursor=cursor, updated_unix=time.time(), **changes)
