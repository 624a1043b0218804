"""Generate audit rows like the producer's: hash-chained through prev_hash, 250-400 bytes each.

Same chain rule as tests/helpers/auditgen.py (and the daemon's verifier): prev_hash is base64(SHA-256)
of the previous row's canonical JSON. A row's `target` can carry `@T<ns>`, its append time,
so the counting sink can measure append-to-arrival latency without parsing anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from audit_otlp.mapping.chain import GENESIS, ChainHasher

TOOLS = ("Write", "Read", "Bash", "WebFetch", "Edit", "Grep")
OUTCOMES = ("allowed", "allowed", "allowed", "denied")


class RowGenerator:
    def __init__(self) -> None:
        self.hasher = ChainHasher()
        self.seq = 0
        self.last_hash: str | None = None

    def row(self, marker_ns: int | None = None) -> dict[str, Any]:
        self.seq += 1
        s = self.seq
        target = f"src/pkg_{s % 37}/module_{s}.py"
        if marker_ns is not None:
            target += f"@T{marker_ns}"
        row: dict[str, Any]
        if s % 50 == 0:
            row = {
                "event": "secret_detected",
                "ts": f"2026-04-15T{(s // 3600) % 24:02d}:{(s // 60) % 60:02d}:{s % 60:02d}.{s % 1000:03d}Z",
                "file": target,
                "target": target,
                "pattern_id": "aws-access-key-id",
                "severity": "critical",
                "masked": "AKIA...MPLE",
                "session_id": f"sess-{s // 1000:06d}",
                "seq": s,
            }
        else:
            row = {
                "event": "tool_use",
                "ts": f"2026-04-15T{(s // 3600) % 24:02d}:{(s // 60) % 60:02d}:{s % 60:02d}.{s % 1000:03d}Z",
                "tool": TOOLS[s % len(TOOLS)],
                "target": target,
                "session_id": f"sess-{s // 1000:06d}",
                "agent_id": "claude-code-7",
                "tool_use_id": f"toolu_{s:08d}",
                "duration_ms": s % 997,
                "bytes_in": 100 + s % 900,
                "bytes_out": 1000 + s % 9000,
                "dest_host": "example.com",
                "policy_outcome": OUTCOMES[s % len(OUTCOMES)],
                "seq": s,
            }
        row["prev_hash"] = self.last_hash or GENESIS
        self.last_hash = self.hasher.row_hash(row)
        return row

    def lines(self, n: int, marker_ns: int | None = None) -> bytes:
        dumps = orjson.dumps
        return b"".join([dumps(self.row(marker_ns)) + b"\n" for _ in range(n)])


def write_file(path: Path, rows: int) -> None:
    """Write `rows` chained rows (in 10k-row slices, so memory stays small)."""
    gen = RowGenerator()
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as out:
        left = rows
        while left:
            n = min(left, 10_000)
            out.write(gen.lines(n))
            left -= n
    os.replace(tmp, path)
