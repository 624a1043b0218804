"""Micro-benchmarks of the per-row work (not a test): µs/row for parse, chain hash, map+encode
and the whole RowMapper, on rows like the agent's hooks write.

    python -m tests.benchmarks.bench_chain [ROWS]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from audit_otlp.mapping.chain import ChainHasher, ChainState, verify_row
from audit_otlp.mapping.envelope import encode_span
from audit_otlp.mapping.ids import MappingOptions, line_digest
from audit_otlp.mapping.parse import parse_line
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.mapping.spans import row_span
from audit_otlp.source.lines import Line
from tests.helpers.auditgen import AuditWriter


class _Events:
    def malformed_line(self, reason: str) -> None: ...
    def chain_break(self, *args: object) -> None: ...


def per_row(label: str, n: int, fn) -> None:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    print(f"{label:<30} {best / n * 1e6:6.2f} µs/row")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    lines = AuditWriter(Path("/nonexistent")).lines(n).splitlines()
    rows = [parse_line(line)[0] for line in lines]
    digests = [line_digest(line) for line in lines]
    options, hasher = MappingOptions(), ChainHasher()
    per_row("parse_line", n, lambda: [parse_line(line) for line in lines])
    per_row("chain hash (SHA-256)", n, lambda: [hasher.line_hash(line, row) for line, row in zip(lines, rows)])
    keyed = ChainHasher(b"k3y")
    per_row("chain hash (HMAC)", n, lambda: [keyed.line_hash(line, row) for line, row in zip(lines, rows)])
    state = ChainState()
    verdicts = [verify_row(state, row, hasher, line) for line, row in zip(lines, rows)]
    per_row(
        "row_span + encode",
        n,
        lambda: [
            encode_span(row_span(row, d, offset=0, observed_ns=1, options=options, chain=v))
            for row, d, v in zip(rows, digests, verdicts)
        ],
    )
    objs, offset = [], 0
    for line in lines:
        objs.append(Line(offset, offset + len(line) + 1, line, None))
        offset += len(line) + 1
    for label, h in (("RowMapper.map_line, verify", hasher), ("RowMapper.map_line, no verify", None)):
        per_row(
            label, n, lambda: [mapper.map_line(o, 1) for mapper in [RowMapper(options, h, ChainState(), _Events())] for o in objs]
        )


if __name__ == "__main__":
    main()
