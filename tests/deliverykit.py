"""Helpers for the delivery tests: batches of real spans built from auditgen rows, exporters
wired to a throw-away Metrics/RunState, and Prometheus text parsing."""

from __future__ import annotations

import hashlib
import re
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import orjson

from audit_otlp.delivery.batching import Batch, SpanSource
from audit_otlp.mapping.chain import ChainState
from audit_otlp.state.checkpoint import Cursor
from audit_otlp.delivery.records import DurableLog
from audit_otlp.delivery.policy import Exporter, ExportSettings
from audit_otlp.source.fileid import FileIdentity
from audit_otlp.source.lines import Line
from audit_otlp.mapping.envelope import make_envelope, resource_attributes
from audit_otlp.mapping.ids import MappingOptions
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.runtime.runstate import RunState
from auditgen import AuditWriter
from processes import free_port, wait_until

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


def settings(endpoint: str, **overrides: Any) -> ExportSettings:
    base: dict[str, Any] = dict(
        endpoint=endpoint, headers={}, vendor_headers={}, timeout=5.0, compression="none", max_in_flight=4,
        initial_backoff=0.01, max_backoff=0.05, auth_backoff=0.05,
    )
    base.update(overrides)
    return ExportSettings(**base)


class Sleeps:
    """An injectable sleep that records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_exporter(tmp: Path, endpoint: str, receipts: bool = False, sleep: Callable[[float], Any] | None = None,
                  dead_letter: Path | None = None, **overrides: Any) -> Exporter:
    kwargs: dict[str, Any] = {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    return Exporter(
        settings(endpoint, **overrides), ENVELOPE, Metrics(), RunState(),
        DurableLog(dead_letter or tmp / "dead-letter.jsonl"),
        DurableLog(tmp / "receipts.jsonl") if receipts else None, **kwargs,
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
    return any((target_of(s) or "").startswith("POISON_")
               for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"])


def span_count(doc: dict[str, Any]) -> int:
    return sum(len(ss["spans"]) for rs in doc["resourceSpans"] for ss in rs["scopeSpans"])




_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(port: int) -> dict[str, float]:
    """Prometheus text from /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out




def daemon_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any OTLP/vendor variables, plus `extra`."""
    import os

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "SENTRY_", "DD_", "AUDIT_OTLP_"))}
    env.update(extra)
    return env


def write_config(path: Path, text: str) -> Path:
    """A TOML config with fast retries for tests, plus `text`."""
    path.write_text(
        "[retry]\ninitial_backoff = \"10ms\"\nmax_backoff = \"100ms\"\nauth_backoff = \"200ms\"\n"
        "[checkpoint]\ninterval = \"20ms\"\n" + text
    )
    return path


class DaemonProcess:
    """`audit-otlp run` as a subprocess with a health port; stderr goes to a file."""

    def __init__(self, audit_cli: str, tmp: Path, endpoint: str, config_text: str = "", env: dict[str, str] | None = None,
                 audit: Path | None = None) -> None:
        import subprocess

        self.tmp = tmp
        self.audit = audit or tmp / "audit.jsonl"
        self.checkpoint = tmp / "cp.json"
        self.health_port = free_port()
        self.log_path = tmp / f"daemon-{self.health_port}.log"
        config = write_config(tmp / "daemon.toml", config_text)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [audit_cli, "run", "--config", str(config), "--file", str(self.audit), "--checkpoint", str(self.checkpoint),
             "--endpoint", endpoint, "--health-listen", f"127.0.0.1:{self.health_port}"],
            env=daemon_env(**(env or {})), stdout=self._log, stderr=subprocess.STDOUT,
        )
        assert wait_until(self._metrics_up, 30), self.log()

    def _metrics_up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log()}")
        try:
            scrape(self.health_port)
            return True
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        return scrape(self.health_port)

    def checkpoint_offset(self) -> int:
        try:
            return int(orjson.loads(self.checkpoint.read_bytes())["offset"])
        except FileNotFoundError:
            return 0

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int | None = None) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._log.close()
        return code

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.stop()


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
