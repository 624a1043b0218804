"""Generate audit rows the way the agent's hooks do: hash-chained through prev_hash, each with a
unique `seq` so tests can check exactly which rows a collector received."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from audit_otlp.mapping.chain import GENESIS, ChainHasher

TOOLS = ("Write", "Read", "Bash", "WebFetch", "Edit", "Grep")


@dataclass
class AuditWriter:
    """Appends chained rows to a file (opened O_APPEND per write, like a hook would)."""

    path: Path
    hasher: ChainHasher = field(default_factory=ChainHasher)
    seq: int = 0
    last_hash: str | None = None
    session: str = "s-1"

    def row(self, **extra: Any) -> dict[str, Any]:
        self.seq += 1
        row: dict[str, Any] = {
            "event": "tool_use",
            "ts": f"2026-04-15T14:{(self.seq // 60) % 60:02d}:{self.seq % 60:02d}.{self.seq % 1000:03d}Z",
            "tool": TOOLS[self.seq % len(TOOLS)],
            "target": f"src/file_{self.seq}.py",
            "session_id": self.session,
            "duration_ms": self.seq % 97,
            "seq": self.seq,
            "prev_hash": self.last_hash or GENESIS,
        }
        row.update(extra)
        self.last_hash = self.hasher.row_hash(row)
        return row

    def lines(self, n: int, **extra: Any) -> bytes:
        return b"".join(orjson.dumps(self.row(**extra)) + b"\n" for _ in range(n))

    def append(self, n: int, **extra: Any) -> list[int]:
        first = self.seq + 1
        data = self.lines(n, **extra)
        append_bytes(self.path, data)
        return list(range(first, self.seq + 1))


def append_bytes(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# The interface's sample tool row (README, "The audit log"): a WebFetch with every mapped field.
WEBFETCH_ROW: dict[str, object] = {
    "event": "tool_use",
    "ts": "2026-04-15T14:23:03.250Z",
    "tool": "WebFetch",
    "session_id": "s-42",
    "duration_ms": 42,
    "bytes_in": 120,
    "bytes_out": 5120,
    "dest_host": "example.com",
    "policy_outcome": "allowed",
    "tool_use_id": "toolu_01",
    "target": "https://example.com/",
}
