"""POST batches to the collector and settle every span: delivered, rejected or dead-lettered.

`deliver()` returns only when each span of the batch has one of those fates; until then it
retries (the file is the buffer, so retrying forever costs no memory beyond the batch).
What each answer means (OTLP spec, with deliberate choices marked):
- 2xx: delivered, minus `partialSuccess.rejectedSpans` (never retried). An empty body (Sentry's
  202) is full success.
- 429, 502, 503, 504, 408, connection errors, timeouts: retried with full-jitter backoff,
  honouring Retry-After. Other 5xx are retried too (choice: a server error says nothing about
  the data, and dead-lettering a whole outage would be loss in all but name).
- 401, 403, 404, 405, 415, 3xx: configuration problems: retried with a long backoff and a
  loud, rate-limited error naming the endpoint (never the credential).
- 413: split in halves down to one span; one span still too large is dead-lettered.
- 400 and other 4xx: bisected to isolate the spans the collector refuses; only those are
  dead-lettered, the rest are delivered.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, NamedTuple

import httpx
import orjson

from audit_otlp import __version__
from audit_otlp.batching import Batch, SpanSource
from audit_otlp.deadletter import DurableLog, truncate_body
from audit_otlp.mapping import Envelope
from audit_otlp.metrics import Metrics
from audit_otlp.retry import Backoff, parse_retry_after
from audit_otlp.runstate import RunState

log = logging.getLogger(__name__)

RESPONSE_LIMIT = 64 * 1024  # like the Collector: read at most this much of an answer
CONFIG_STATUSES = frozenset({401, 403, 404, 405, 407, 415})
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})


class Outcome(NamedTuple):
    delivered: int = 0
    rejected: int = 0
    dead_lettered: int = 0

    def __add__(self, other: "Outcome") -> "Outcome":  # type: ignore[override]
        return Outcome(self.delivered + other.delivered, self.rejected + other.rejected, self.dead_lettered + other.dead_lettered)


def classify(status: int) -> str:
    """ok | retry | config | too_large | refused"""
    if 200 <= status < 300:
        return "ok"
    if status == 413:
        return "too_large"
    if status in RETRY_STATUSES or status >= 500:
        return "retry"
    if status in CONFIG_STATUSES or 300 <= status < 400:
        return "config"
    return "refused"


def parse_partial_success(body: bytes) -> tuple[int, str]:
    """(rejectedSpans, errorMessage) from an ExportTraceServiceResponse; (0, "") if absent."""
    if not body.strip():
        return 0, ""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0, ""
    partial = doc.get("partialSuccess") if isinstance(doc, dict) else None
    if not isinstance(partial, dict):
        return 0, ""
    try:
        rejected = int(partial.get("rejectedSpans") or 0)
    except (TypeError, ValueError):
        rejected = 0
    return max(rejected, 0), str(partial.get("errorMessage") or "")


@dataclass(frozen=True)
class ExportSettings:
    endpoint: str
    headers: Mapping[str, str]
    vendor_headers: Mapping[str, str]  # attached only when the endpoint is the vendor's host
    timeout: float
    compression: str
    max_in_flight: int
    initial_backoff: float
    max_backoff: float
    auth_backoff: float
    certificate: str | None = None
    client_certificate: str | None = None
    client_key: str | None = None
    insecure: bool = False


def build_ssl_context(settings: ExportSettings) -> ssl.SSLContext | bool:
    if settings.insecure:
        return False
    context = ssl.create_default_context(cafile=settings.certificate)
    if settings.client_certificate and settings.client_key:
        context.load_cert_chain(settings.client_certificate, settings.client_key)
    return context


class _Answer(NamedTuple):
    status: int | None  # None: no HTTP answer (connection error, timeout)
    body: bytes
    retry_after: float | None
    error: str


class Exporter:
    def __init__(
        self,
        settings: ExportSettings,
        envelope: Envelope,
        metrics: Metrics,
        state: RunState,
        dead_letter: DurableLog,
        receipts: DurableLog | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.envelope = envelope
        self.metrics = metrics
        self.state = state
        self.dead_letter = dead_letter
        self.receipts = receipts
        self._sleep = sleep
        self._host = urllib.parse.urlsplit(settings.endpoint).hostname or ""
        self._last_loud_error = 0.0
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"audit-otlp/{__version__} OTel-OTLP-Exporter-Python-JSON",
            **self.settings.headers,
            **self.settings.vendor_headers,
        }
        if self.settings.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        limits = httpx.Limits(max_connections=self.settings.max_in_flight, max_keepalive_connections=self.settings.max_in_flight)
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.settings.timeout or None),
            limits=limits,
            verify=build_ssl_context(self.settings),
            follow_redirects=False,  # a redirect must not carry credentials elsewhere
            trust_env=False,
        )
        parts = urllib.parse.urlsplit(self.settings.endpoint)
        if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
            log.warning("exporting over plain http to non-loopback host %s: spans travel unencrypted", parts.hostname)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # -- delivery ------------------------------------------------------------------------------

    async def deliver(self, batch: Batch) -> Outcome:
        if not batch.spans:
            return Outcome()
        self.metrics.in_flight.inc()
        try:
            return await self._deliver_range(batch, 0, len(batch.spans))
        finally:
            self.metrics.in_flight.dec()

    async def _deliver_range(self, batch: Batch, lo: int, hi: int) -> Outcome:
        backoff = Backoff(self.settings.initial_backoff, self.settings.max_backoff)
        body = self.envelope.body(batch.spans[lo:hi])
        while True:
            started = time.monotonic()
            answer = await self._post(body)
            latency = time.monotonic() - started
            label = str(answer.status) if answer.status is not None else "error"
            self.metrics.export_requests.labels(status=label).inc()
            verdict = classify(answer.status) if answer.status is not None else "retry"
            log.debug("request: status=%s spans=%d bytes=%d latency=%.0fms", label, hi - lo, len(body), latency * 1000)

            if verdict == "ok":
                return await self._settle_ok(batch, lo, hi, answer)
            if verdict in ("too_large", "refused"):
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    log.info("collector answered %s for %d spans; splitting the request", label, hi - lo)
                    return await self._deliver_range(batch, lo, mid) + await self._deliver_range(batch, mid, hi)
                return await self._dead_letter(batch, lo, answer)

            self.metrics.export_retries.inc()
            self.state.export_failed(f"HTTP {answer.status}" if answer.status is not None else answer.error)
            if verdict == "config":
                delay = max(self.settings.auth_backoff, answer.retry_after or 0.0)
                self._loud_error(
                    f"collector at {self._host} answered {answer.status}: a configuration problem (credentials, "
                    f"URL or content type); keeping every row and retrying in {delay:.0f} s"
                )
            else:
                jittered = backoff.next_delay()
                delay = answer.retry_after if answer.retry_after is not None else jittered
                log.warning("export failed (%s); retrying in %.2f s", label if answer.status is not None else answer.error, delay)
            await self._sleep(delay)

    async def _post(self, body: bytes) -> _Answer:
        assert self._client is not None, "start() first"
        if self.settings.compression == "gzip":
            body = await asyncio.to_thread(gzip.compress, body, 5) if len(body) > 65536 else gzip.compress(body, 5)
        try:
            async with self._client.stream("POST", self.settings.endpoint, content=body) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= RESPONSE_LIMIT:
                        break
                return _Answer(response.status_code, b"".join(chunks)[:RESPONSE_LIMIT], parse_retry_after(response.headers.get("retry-after")), "")
        except httpx.TimeoutException:
            return _Answer(None, b"", None, "timeout")
        except httpx.TransportError as exc:
            return _Answer(None, b"", None, type(exc).__name__)

    async def _settle_ok(self, batch: Batch, lo: int, hi: int, answer: _Answer) -> Outcome:
        rejected, message = parse_partial_success(answer.body)
        rejected = min(rejected, hi - lo)
        delivered = hi - lo - rejected
        if rejected or message:
            log.warning("collector rejected %d of %d spans (partial success): %s", rejected, hi - lo, message[:500])
        if self.receipts is not None:
            await self._write_durably(self.receipts, [self._receipt(batch.sources[lo:hi], answer.status or 0, hi - lo, rejected)])
        self.metrics.spans_delivered.inc(delivered)
        self.metrics.spans_rejected.inc(rejected)
        self.metrics.last_success.set(time.time())
        self.state.export_succeeded(delivered, rejected)
        return Outcome(delivered=delivered, rejected=rejected)

    async def _dead_letter(self, batch: Batch, index: int, answer: _Answer) -> Outcome:
        source = batch.sources[index]
        record: dict[str, Any] = {
            "time": _now_iso(),
            "path": str(source.path),
            "file": source.identity.to_json(),
            "offset": source.offset,
            "line_sha256": source.line_sha256,
            "status": answer.status,
            "response": truncate_body(answer.body),
        }
        if source.line is None:
            record["line"] = None  # oversize line: its content was never held
        else:
            try:
                record["line"] = source.line.decode("utf-8")
            except UnicodeDecodeError:
                record["line_base64"] = base64.b64encode(source.line).decode("ascii")
        await self._write_durably(self.dead_letter, [record])
        self.metrics.spans_dead_lettered.inc()
        log.error(
            "collector refused a span for good (HTTP %s); row at %s offset %d written to the dead-letter file %s",
            answer.status, source.path, source.offset, self.dead_letter.path,
        )
        return Outcome(dead_lettered=1)

    async def _write_durably(self, target: DurableLog, records: list[dict[str, Any]]) -> None:
        """Retry until the records are on disk: the checkpoint must not move before that."""
        backoff = Backoff(self.settings.initial_backoff, self.settings.max_backoff)
        while True:
            try:
                await target.append(records)
                return
            except OSError as exc:
                self._loud_error(f"cannot write {target.path}: {exc.strerror or exc}; retrying (the checkpoint waits)")
                await self._sleep(backoff.next_delay())

    def _receipt(self, sources: list[SpanSource], status: int, spans: int, rejected: int) -> dict[str, Any]:
        first, last = sources[0], sources[-1]
        return {
            "time": _now_iso(),
            "endpoint_host": self._host,
            "status": status,
            "spans": spans,
            "rejected": rejected,
            "path": str(first.path),
            "file": first.identity.to_json(),
            "byte_range": [first.offset, last.offset + (len(last.line) + 1 if last.line is not None else 0)],
            "last_file": last.identity.to_json() if last.identity != first.identity else None,
            "first_line_sha256": first.line_sha256,
            "last_line_sha256": last.line_sha256,
        }

    def _loud_error(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_loud_error >= 60.0:
            self._last_loud_error = now
            log.error(message)
        else:
            log.debug(message)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.") or host.endswith(".localhost")


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
