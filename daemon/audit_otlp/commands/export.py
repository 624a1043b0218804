"""`audit-otlp export FILE`: the whole file as OTLP/JSON requests on stdout, one per line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from audit_otlp.config import Config
from audit_otlp.delivery.batching import BatchBuilder, BatchLimits, SpanSource
from audit_otlp.mapping.chain import ChainHasher, ChainState, ChainVerdict
from audit_otlp.mapping.envelope import Envelope
from audit_otlp.mapping.ids import MappingOptions
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.runtime.lifecycle import EXIT_OK, EXIT_USAGE
from audit_otlp.runtime.logs import setup_logging
from audit_otlp.runtime.wiring import build_envelope
from audit_otlp.source.fileid import identify_fd
from audit_otlp.source.lines import LineSplitter
from audit_otlp.state.checkpoint import Cursor

CHUNK = 1024 * 1024


class _CountingEvents:
    def __init__(self) -> None:
        self.malformed = 0
        self.breaks = 0

    def malformed_line(self, reason: str) -> None:
        self.malformed += 1

    def chain_break(self, verdict: ChainVerdict, offset: int, line_number: int) -> None:
        self.breaks += 1


def export_requests(
    path: Path, envelope: Envelope, limits: BatchLimits, options: MappingOptions, hasher: ChainHasher | None, max_line_bytes: int
) -> Iterator[bytes]:
    """Request bodies for every complete line of `path` (a final line without newline included)."""
    mapper = RowMapper(options, hasher, ChainState(), _CountingEvents())
    builder = BatchBuilder(envelope, limits)
    splitter = LineSplitter(max_line_bytes)
    with open(path, "rb") as fh:
        identity = identify_fd(fh.fileno())
        dummy_end = Cursor(str(path), identity, 0)
        observed_ns = time.time_ns()
        while True:
            chunk = fh.read(CHUNK)
            lines = splitter.feed(chunk) if chunk else []
            if not chunk:
                tail = splitter.take_unterminated()
                lines = [tail] if tail is not None else []
            for line in lines:
                mapped = mapper.map_line(line, observed_ns)
                for span in mapped.spans:
                    if not builder.fits(span):
                        yield envelope.body(builder.take(0, dummy_end).spans)
                    builder.add(span, SpanSource(path, identity, line.offset, None, ""))
                if builder.full:
                    yield envelope.body(builder.take(0, dummy_end).spans)
            if not chunk:
                break
    if len(builder):
        yield envelope.body(builder.take(0, dummy_end).spans)


def write_export(out: BinaryIO, requests: Iterator[bytes]) -> int:
    count = 0
    for body in requests:
        out.write(body + b"\n")
        count += 1
    out.flush()
    return count


def main(args: argparse.Namespace, config: Config) -> int:
    path = Path(args.path)
    setup_logging(config.log.format, config.log.level, config.secrets)
    limits = BatchLimits(config.batch.max_spans, config.batch.max_bytes, config.batch.max_wait)
    hasher = ChainHasher(config.chain_key) if config.chain.verify else None
    try:
        write_export(
            sys.stdout.buffer,
            export_requests(
                path,
                build_envelope(config),
                limits,
                MappingOptions(config.mapping.trace_id_from),
                hasher,
                config.source.max_line_bytes,
            ),
        )
    except OSError as exc:
        print(f"audit-otlp: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
