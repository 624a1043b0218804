"""POST batches to the collector and settle every span: delivered, rejected or dead-lettered.

`deliver()` returns only when each span of the batch has one of those fates; until then it
retries (the file is the buffer, so retrying forever costs no memory beyond the batch).
What each answer means (OTLP spec, with deliberate choices marked; docs/delivery.md):
- 2xx: delivered, minus `partialSuccess.rejectedSpans` (counted as rejected, logged with the
  errorMessage, never retried). An empty or non-JSON body (Sentry's 202) is full success.
- 429, 502, 503, 504, connection errors, resets, timeouts: retried with full-jitter backoff;
  a Retry-After (seconds or HTTP-date, capped at 300 s) is the minimum wait. Choice: 408 and
  every other 5xx (500 included) are retried too: a server error says nothing about the data,
  and dead-lettering a whole outage would be loss in all but name.
- 401, 403, 404, 405, 407, 415, 3xx and TLS verification failures: configuration problems:
  retried with a long backoff (retry.auth_backoff) and a loud, rate-limited error naming the
  endpoint (never the credential). Redirects are not followed (credentials stay put).
- 413, or a body over export.max_request_bytes: split in halves down to one span; one span
  still too large is dead-lettered.
- 400 and every other 4xx: bisected to isolate the spans the collector refuses; only those are
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
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, NamedTuple

import httpx
import orjson

from audit_otlp import __version__
from audit_otlp.config import ConfigError, mask_url
from audit_otlp.delivery.batching import Batch, SpanSource
from audit_otlp.delivery.records import DurableLog, truncate_body
from audit_otlp.delivery.retry import Backoff, parse_retry_after
from audit_otlp.delivery.sink import Outcome
from audit_otlp.mapping.envelope import Envelope
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.runstate import RunState

log = logging.getLogger(__name__)

RESPONSE_LIMIT = 64 * 1024  # like the Collector: read at most this much of an answer
CONFIG_STATUSES = frozenset({401, 403, 404, 405, 407, 415})
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
LOUD_EVERY = 60.0  # seconds between two loud errors of the same kind
RETRY_LOG_EVERY = 10.0  # seconds between two "retrying" warnings (the rest go to debug)


def classify(status: int | None) -> str:
    """ok | retry | config | too_large | refused  (None: no HTTP answer at all)"""
    if status is None:
        return "retry"
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
    headers: Mapping[str, str] = field(repr=False)
    vendor_headers: Mapping[str, str] = field(repr=False)  # already filtered to the vendor's own origin
    timeout: float = 10.0
    compression: str = "none"
    max_in_flight: int = 4
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    auth_backoff: float = 60.0
    certificate: str | None = None
    client_certificate: str | None = None
    client_key: str | None = None
    insecure: bool = False
    max_request_bytes: int = 64 * 1024 * 1024  # before compression, as the OTLP spec measures it


def build_ssl_context(settings: ExportSettings) -> ssl.SSLContext | bool:
    """Verified TLS by default (the CA bundle replaces the system store when given); mTLS with
    a client certificate and key; `insecure` is the only way to turn verification off."""
    if settings.insecure:
        return False
    try:
        context = ssl.create_default_context(cafile=settings.certificate)
        if settings.client_certificate and settings.client_key:
            context.load_cert_chain(settings.client_certificate, settings.client_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "export.certificate / export.client_certificate / export.client_key "
            f"(OTEL_EXPORTER_OTLP_*CERTIFICATE, *_CLIENT_KEY): cannot load: {getattr(exc, 'strerror', None) or exc}; "
            "accepted: readable PEM files"
        ) from None
    return context


class _Answer(NamedTuple):
    status: int | None  # None: no HTTP answer (connection error, timeout)
    body: bytes
    retry_after: float | None
    error: str  # why there was no answer
    tls_rejected: bool = False  # the server's certificate did not verify: a configuration problem


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
        self._shown_endpoint = mask_url(settings.endpoint)  # no userinfo, no query values
        self._last_logged: dict[str, float] = {}
        self._verify = build_ssl_context(settings)  # fails at start-up, not at the first request
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
            verify=self._verify,
            follow_redirects=False,  # a redirect must not carry credentials elsewhere
            trust_env=False,  # no proxy or CA variables other than the OTLP ones
        )
        parts = urllib.parse.urlsplit(self.settings.endpoint)
        if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
            log.warning("exporting over plain http to non-loopback host %s: spans travel unencrypted", parts.hostname)
        if parts.scheme == "https" and self.settings.insecure:
            log.warning("export.insecure is on: the certificate of %s is NOT verified", parts.hostname)

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
        body = self.envelope.body(batch.spans[lo:hi])
        if len(body) > self.settings.max_request_bytes:  # the spec: never send an oversized request
            if hi - lo > 1:
                return await self._split(batch, lo, hi, f"over export.max_request_bytes ({len(body)} bytes)")
            return await self._dead_letter(batch, lo, _Answer(None, b"", None, "too_large"),
                                           f"larger than export.max_request_bytes ({len(body)} bytes)")
        backoff = Backoff(self.settings.initial_backoff, self.settings.max_backoff)
        payload = await self._compress(body)  # once, not on every retry
        while True:
            started = time.monotonic()
            answer = await self._post(payload)
            latency = time.monotonic() - started
            label = str(answer.status) if answer.status is not None else "error"
            self.metrics.export_requests.labels(status=label).inc()
            self.metrics.export_duration.observe(latency)
            verdict = "config" if answer.tls_rejected else classify(answer.status)
            log.debug("request: status=%s spans=%d bytes=%d latency=%.0fms", label, hi - lo, len(body), latency * 1000)

            if verdict == "ok":
                return await self._settle_ok(batch, lo, hi, answer)
            if verdict in ("too_large", "refused"):
                if hi - lo > 1:
                    return await self._split(batch, lo, hi, f"collector answered {label}")
                return await self._dead_letter(batch, lo, answer, "too_large" if verdict == "too_large" else "refused")

            self.metrics.export_retries.inc()
            what = f"HTTP {answer.status}" if answer.status is not None else answer.error
            self.state.export_failed(what)
            if verdict == "config":
                delay = max(self.settings.auth_backoff, answer.retry_after or 0.0)
                self._log_limited(
                    "config", LOUD_EVERY, logging.ERROR,
                    f"collector {self._shown_endpoint} refused the request ({what}): a configuration problem "
                    f"(credentials, URL, content type or TLS trust); keeping every row and retrying every {delay:.0f} s",
                )
            else:
                # Retry-After is a floor, the jittered backoff can only lengthen it (like the Collector).
                delay = max(backoff.next_delay(), answer.retry_after or 0.0)
                self._log_limited(
                    "retry", RETRY_LOG_EVERY, logging.WARNING,
                    f"export to {self._host} failed ({what}); retrying in {delay:.2f} s (rows wait in the file)",
                )
            await self._sleep(delay)

    async def _split(self, batch: Batch, lo: int, hi: int, why: str) -> Outcome:
        mid = (lo + hi) // 2
        log.info("%s for %d spans; splitting the request in two", why, hi - lo)
        first = await self._deliver_range(batch, lo, mid)
        return first + await self._deliver_range(batch, mid, hi)

    async def _compress(self, body: bytes) -> bytes:
        if self.settings.compression != "gzip":
            return body
        return await asyncio.to_thread(gzip.compress, body, 5) if len(body) > 65536 else gzip.compress(body, 5)

    async def _post(self, body: bytes) -> _Answer:
        assert self._client is not None, "start() first"
        response: httpx.Response | None = None
        try:
            async with self._client.stream("POST", self.settings.endpoint, content=body) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= RESPONSE_LIMIT:
                        break
                answer = _Answer(response.status_code, b"".join(chunks)[:RESPONSE_LIMIT], parse_retry_after(response.headers.get("retry-after")), "")
            return answer  # the response is closed (its connection back in the pool) here
        except httpx.TimeoutException as exc:
            return _Answer(None, b"", None, f"timeout ({type(exc).__name__})")
        except (httpx.HTTPError, OSError) as exc:  # OSError: ssl.SSLError can escape httpx unwrapped
            detail = str(exc)[:200] or type(exc).__name__
            return _Answer(None, b"", None, f"{type(exc).__name__}: {detail}", tls_rejected=_tls_trust_failure(exc))
        finally:
            if response is not None:
                _unlink(response)

    async def _settle_ok(self, batch: Batch, lo: int, hi: int, answer: _Answer) -> Outcome:
        rejected, message = parse_partial_success(answer.body)
        rejected = min(rejected, hi - lo)
        delivered = hi - lo - rejected
        if rejected or message:
            self._log_limited(
                "partial", RETRY_LOG_EVERY, logging.WARNING,
                f"collector {self._host} rejected {rejected} of {hi - lo} spans (partial success, not retried): {message[:500]}",
            )
        if self.receipts is not None:
            await self._write_durably(self.receipts, [self._receipt(batch.sources[lo:hi], answer.status or 0, hi - lo, rejected)])
        self.metrics.spans_delivered.inc(delivered)
        self.metrics.spans_rejected.inc(rejected)
        self.metrics.last_success.set(time.time())
        self.state.export_succeeded(delivered, rejected)
        return Outcome(delivered=delivered, rejected=rejected)

    async def _dead_letter(self, batch: Batch, index: int, answer: _Answer, reason: str) -> Outcome:
        source = batch.sources[index]
        record: dict[str, Any] = {
            "time": _now_iso(),
            "reason": reason,
            "endpoint_host": self._host,
            "status": answer.status,
            "response": truncate_body(answer.body),
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
        await self._write_durably(self.dead_letter, [record])
        self.metrics.spans_dead_lettered.inc()
        log.error(
            "collector refused a span for good (%s, HTTP %s); row at %s offset %d written to the dead-letter file %s",
            reason, answer.status, source.path, source.offset, self.dead_letter.path,
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
                self._log_limited(f"write:{target.path}", LOUD_EVERY, logging.ERROR,
                                  f"cannot write {target.path}: {exc.strerror or exc}; retrying (the checkpoint waits)")
                await self._sleep(backoff.next_delay())

    def _receipt(self, sources: list[SpanSource], status: int, spans: int, rejected: int) -> dict[str, Any]:
        first, last = sources[0], sources[-1]
        same_file = last.identity == first.identity
        return {
            "time": _now_iso(),
            "endpoint_host": self._host,
            "status": status,
            "spans": spans,
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

    def _log_limited(self, kind: str, every: float, level: int, message: str) -> None:
        """At most one message of each kind per `every` seconds at `level`; the rest at debug."""
        now = time.monotonic()
        last = self._last_logged.get(kind)
        if last is None or now - last >= every:
            self._last_logged[kind] = now
            log.log(level, message)
        else:
            log.debug(message)


def _unlink(response: httpx.Response) -> None:
    """httpx links a sent response and its stream both ways (`response.stream` is a
    BoundAsyncStream holding the response): a reference cycle that keeps the request and its
    body (~1 MB) alive until the cycle collector runs, so RSS grows with the request rate. The
    stream is done with once read; replacing it ends the cycle and frees the body at once."""
    response.stream = httpx.ByteStream(b"")


def _line_end(source: SpanSource) -> int:
    if source.end >= 0:
        return source.end
    return source.offset + (len(source.line) + 1 if source.line is not None else 0)


def _tls_trust_failure(exc: BaseException) -> bool:
    """Did a TLS handshake fail over certificates (ours or theirs)? That is configuration."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if isinstance(seen, ssl.SSLError) and any(w in str(seen).upper() for w in ("CERTIFICATE", "UNKNOWN_CA")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.") or host.endswith(".localhost")


def _now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
