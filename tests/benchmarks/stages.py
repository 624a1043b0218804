"""Per-row cost of each stage on the daemon's path, from the file to a request body.

    python -m tests.benchmarks.stages [--rows 20000] [--repeats 7] [--only chain,map_line]

On rows from tests/benchmarks/gen.py (producer-like, hash-chained), prints one line per stage,
in microseconds per row, the median of `--repeats` timings:

    read      os.pread of 256 KiB chunks (the file is in the page cache)
    split     LineSplitter.feed, including each line's SHA-256
    parse     parse.parse_line
    chain     ChainHasher.line_hash + ChainJudge.judge (canonical JSON, SHA-256, verdict)
    map       spans.row_span (the span dict)
    encode    envelope.encode_span (OTLP/JSON), and protobuf.encode_span
    map_line  RowMapper.map_line: parse + chain + map + encode, as the daemon calls it
    batch     BatchBuilder.fits/add, and Envelope.body for every full batch

and, per call rather than per row, what each checkpoint cursor costs (ChainState.carried and
IdentityWindow.carried, taken per chunk and per batch).

The fixtures (lines, rows, verdicts, span dicts) are built first and then frozen out of the
cycle collector's sight (gc.freeze), so its passes during a timing cost what they cost the
daemon, whose live objects are few. Results are drained, never kept. Only public interfaces
are used, so the same script measures another checkout: run it from this tree with
`PYTHONPATH=/path/to/other/daemon` for an A/B (alternate the runs; the machine is shared).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from audit_otlp.delivery import protobuf
from audit_otlp.delivery.batching import BatchBuilder, BatchLimits, SpanSource
from audit_otlp.mapping import envelope, parse, spans
from audit_otlp.mapping.chain import ChainHasher, ChainJudge, ChainState
from audit_otlp.mapping.ids import MappingOptions
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.source.fileid import FileIdentity
from audit_otlp.source.lines import LineSplitter
from audit_otlp.state.checkpoint import Cursor
from tests.benchmarks.gen import RowGenerator

CHUNK = 256 * 1024  # what the tailer reads at a time
MAX_LINE_BYTES = 1 << 20


class _NoEvents:
    def malformed_line(self, reason: str) -> None:
        pass

    def chain_break(self, *args: Any) -> None:
        pass

    def chain_fork(self) -> None:
        pass

    def chain_note(self, message: str) -> None:
        pass


def drain(results: Iterable[object]) -> None:
    """Consume without keeping: results kept alive make the cycle collector's passes (and so
    the timings) grow with the number of rows, which the daemon never sees."""
    deque(results, maxlen=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7, help="timings per stage; the median is printed")
    parser.add_argument("--only", default="", help="comma-separated stages to time (default: all)")
    args = parser.parse_args()
    n, repeats, only = args.rows, args.repeats, set(filter(None, args.only.split(",")))

    data = RowGenerator().lines(n)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            run(fd, data, n, repeats, only)
        finally:
            os.close(fd)


def run(fd: int, data: bytes, n: int, repeats: int, only: set[str]) -> None:
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    splitter = LineSplitter(MAX_LINE_BYTES)
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    raw = [line.data for line in lines]
    assert len(lines) == n and all(d is not None for d in raw)
    rows = [parse.parse_line(d)[0] for d in raw]
    options = MappingOptions()
    hasher = ChainHasher()
    judge = ChainJudge(ChainState(), hasher)
    verdicts = [
        judge.judge(row.get("prev_hash"), hasher.line_hash(line.data, row), line.offset, line.data)
        for line, row in zip(lines, rows)
    ]
    assert all(v.verdict == "ok" for v in verdicts), "the generated rows are one unbroken chain"
    items = list(zip(lines, rows, verdicts))
    span_dicts = [
        spans.row_span(row, line.digest, offset=line.offset, observed_ns=1, options=options, chain=v) for line, row, v in items
    ]
    encoded = [envelope.encode_span(s) for s in span_dicts]
    # A mapper that has seen the rows, for the per-cursor costs (full windows, as in the daemon).
    warm = RowMapper(options, hasher, ChainState(), _NoEvents())
    for line in lines:
        warm.map_line(line, 1)
    json_envelope = envelope.make_envelope(envelope.resource_attributes("bench", {}, False))
    identity = FileIdentity(0, 0, "0" * 64, 0)
    end_cursor = Cursor("audit.jsonl", identity, len(data))
    source = SpanSource(Path("audit.jsonl"), identity, 0, None, "0" * 64)
    gc.collect()
    gc.freeze()  # the fixtures above are the benchmark's, not the daemon's, live objects

    def timed(label: str, fn: Callable[[], object], per: int = n, unit: str = "µs/row") -> None:
        if only and label not in only:
            return
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        median = statistics.median(samples) / per * 1e6
        print(f"{label:<10} {median:7.2f} {unit}   (min {min(samples) / per * 1e6:.2f})", flush=True)

    def read() -> None:
        offset = 0
        while chunk := os.pread(fd, CHUNK, offset):
            offset += len(chunk)

    def split() -> None:
        feed = LineSplitter(MAX_LINE_BYTES).feed
        drain(feed(chunk) for chunk in chunks)

    def chain() -> None:
        judge = ChainJudge(ChainState(), hasher).judge
        line_hash = hasher.line_hash
        drain(judge(row.get("prev_hash"), line_hash(line.data, row), line.offset, line.data) for line, row, _ in items)

    def map_rows() -> None:
        row_span = spans.row_span
        drain(row_span(row, line.digest, offset=line.offset, observed_ns=1, options=options, chain=v) for line, row, v in items)

    def map_lines() -> None:
        map_line = RowMapper(options, hasher, ChainState(), _NoEvents()).map_line
        drain(map_line(line, 1) for line in lines)

    def batch() -> None:
        builder = BatchBuilder(json_envelope, BatchLimits())
        body, seq = json_envelope.body, 0
        for span in encoded:
            if not builder.fits(span):
                seq += 1
                body(builder.take(seq, end_cursor).spans)
            builder.add(span, source)
        body(builder.take(seq + 1, end_cursor).spans)

    def cursor() -> None:
        for _ in range(100):
            tuple(warm.chain.carried())
            warm.identity.carried(warm.identity.pushed - 10)

    print(f"{n} rows, {len(data) / n:.0f} bytes each; span {sum(map(len, encoded)) / n:.0f} bytes (OTLP/JSON)")
    timed("read", read)
    timed("split", split)
    timed("parse", lambda: drain(map(parse.parse_line, raw)))
    timed("chain", chain)
    timed("map", map_rows)
    timed("encode", lambda: drain(map(envelope.encode_span, span_dicts)))
    timed("encode-pb", lambda: drain(map(protobuf.encode_span, span_dicts)))
    timed("map_line", map_lines)
    timed("batch", batch)
    timed("cursor", cursor, per=100, unit="µs/cursor")


if __name__ == "__main__":
    main()
