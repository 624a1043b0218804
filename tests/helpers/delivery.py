"""Helpers for the delivery tests: batches of real spans built from auditgen rows, exporters wired
to a throw-away Metrics/RunState, and readers of what a run left on disk."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from audit_otlp.delivery.batching import Batch, SpanSource
from audit_otlp.delivery.policy import Exporter
from audit_otlp.delivery.records import DurableLog
from audit_otlp.delivery.settings import ExportSettings
from audit_otlp.mapping.chain import ChainState
from audit_otlp.mapping.envelope import make_envelope, resource_attributes
from audit_otlp.mapping.ids import MappingOptions
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.runstate import RunState
from audit_otlp.source.fileid import FileIdentity
from audit_otlp.source.lines import Line
from audit_otlp.state.checkpoint import Cursor
from tests.helpers.auditgen import AuditWriter

ENVELOPE = make_envelope(resource_attributes("test", {}, False))
IDENTITY = FileIdentity(1, 2, "ab" * 32, 1024)


class _NoEvents:
    def malformed_line(self, reason: str) -> None: ...
    def chain_break(self, verdict: Any, offset: int, line_number: int) -> None: ...


def make_batch(tmp: Path, n: int, marker_seqs: frozenset[int] = frozenset(), seq: int = 0, pad: int = 0) -> Batch:
    """A batch of `n` spans from chained rows; rows in `marker_seqs` carry target POISON_<seq>."""
    writer = AuditWriter(tmp / "unused.jsonl")
    mapper = RowMapper(MappingOptions("prev_hash"), None, ChainState(), _NoEvents())
    spans: list[bytes] = []
    sources: list[SpanSource] = []
    offset = 0
    for _ in range(n):
        nxt = writer.seq + 1
        extra: dict[str, Any] = {"target": f"POISON_{nxt}"} if nxt in marker_seqs else {}
        if pad:
            extra["dest_host"] = "x" * pad  # a mapped attribute, so the span grows
        data = orjson.dumps(writer.row(**extra))
        line = Line(offset, offset + len(data) + 1, data)
        mapped = mapper.map_line(line, time.time_ns())
        for span in mapped.spans:
            spans.append(span)
            sources.append(SpanSource(tmp / "audit.jsonl", IDENTITY, line.offset, data, mapped.digest.hex(), line.end))
        offset = line.end
    return Batch(seq, spans, sources, Cursor(str(tmp / "audit.jsonl"), IDENTITY, offset))


def metrics_and_state() -> tuple[Metrics, RunState]:
    """A fresh RunState and the Metrics that read it (an Exporter takes both)."""
    state = RunState()
    return Metrics(state), state


def settings(endpoint: str, **overrides: Any) -> ExportSettings:
    base: dict[str, Any] = dict(
        endpoint=endpoint,
        headers={},
        vendor_headers={},
        timeout=5.0,
        compression="none",
        max_in_flight=4,
        initial_backoff=0.01,
        max_backoff=0.05,
        auth_backoff=0.05,
    )
    base.update(overrides)
    return ExportSettings(**base)


class Sleeps:
    """An injectable sleep that records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_exporter(
    tmp: Path,
    endpoint: str,
    receipts: bool = False,
    sleep: Callable[[float], Any] | None = None,
    dead_letter: Path | None = None,
    **overrides: Any,
) -> Exporter:
    kwargs: dict[str, Any] = {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    return Exporter(
        settings(endpoint, **overrides),
        ENVELOPE,
        *metrics_and_state(),
        DurableLog(dead_letter or tmp / "dead-letter.jsonl"),
        DurableLog(tmp / "receipts.jsonl") if receipts else None,
        **kwargs,
    )


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def target_of(span: dict[str, Any]) -> str | None:
    for kv in span.get("attributes", []):
        if kv["key"] == "audit.target":
            return kv["value"].get("stringValue")
    return None


def has_marker(doc: dict[str, Any]) -> bool:
    return any(
        (target_of(s) or "").startswith("POISON_") for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]
    )


def span_count(doc: dict[str, Any]) -> int:
    return sum(len(ss["spans"]) for rs in doc["resourceSpans"] for ss in rs["scopeSpans"])


def row_offsets(path: Path) -> list[tuple[int, int | None]]:
    """(offset, seq) of every line of an audit file, in order (seq None for non-rows)."""
    out: list[tuple[int, int | None]] = []
    offset = 0
    for line in path.read_bytes().splitlines(keepends=True):
        try:
            seq = orjson.loads(line).get("seq")
        except (orjson.JSONDecodeError, AttributeError):
            seq = None
        out.append((offset, seq))
        offset += len(line)
    return out


def first_unsettled_offset(rows: list[tuple[int, int | None]], settled: set[int], file_size: int) -> int:
    """Offset of the first row whose seq is not settled (acknowledged or dead-lettered)."""
    for offset, seq in rows:
        if seq is not None and seq not in settled:
            return offset
    return file_size
