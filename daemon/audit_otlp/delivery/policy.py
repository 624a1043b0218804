"""The retry/split/bisect policy: settle every span of a batch as delivered, rejected or dead-lettered.

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
import gzip
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable

import orjson

from audit_otlp.config import mask_url
from audit_otlp.delivery.batching import Batch
from audit_otlp.delivery.ratelimit import LOUD_EVERY, RateLimitedLog
from audit_otlp.delivery.records import DurableLog, append_until_written, dead_letter_record, receipt_record
from audit_otlp.delivery.retry import Backoff
from audit_otlp.delivery.settings import ExportSettings
from audit_otlp.delivery.sink import Outcome
from audit_otlp.delivery.transport import Answer, Transport
from audit_otlp.mapping.envelope import Envelope
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.runstate import RunState

log = logging.getLogger(__name__)

CONFIG_STATUSES = frozenset({401, 403, 404, 405, 407, 415})
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
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


class Exporter:
    """The `Sink` that delivers: `deliver()` returns only once each span of the batch has a fate.

    `settings` may be replaced while running (SIGHUP changes the backoffs); the connection
    settings are the transport's, fixed at construction.
    """

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
        self.transport = Transport(settings)  # builds the TLS context: fails at start-up, not at the first request
        self._sleep = sleep
        self._host = urllib.parse.urlsplit(settings.endpoint).hostname or ""
        self._shown_endpoint = mask_url(settings.endpoint)  # no userinfo, no query values
        self._loud = RateLimitedLog(log)

    async def start(self) -> None:
        await self.transport.start()

    async def aclose(self) -> None:
        await self.transport.aclose()

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
            return await self._dead_letter(
                batch, lo, Answer(None, b"", None, "too_large"), f"larger than export.max_request_bytes ({len(body)} bytes)"
            )
        backoff = Backoff(self.settings.initial_backoff, self.settings.max_backoff)
        payload = await self._compress(body)  # once, not on every retry
        while True:
            started = time.monotonic()
            answer = await self.transport.post(payload)
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
                self._loud.log(
                    "config",
                    LOUD_EVERY,
                    logging.ERROR,
                    f"collector {self._shown_endpoint} refused the request ({what}): a configuration problem "
                    f"(credentials, URL, content type or TLS trust); keeping every row and retrying every {delay:.0f} s",
                )
            else:
                # Retry-After is a floor, the jittered backoff can only lengthen it (like the Collector).
                delay = max(backoff.next_delay(), answer.retry_after or 0.0)
                self._loud.log(
                    "retry",
                    RETRY_LOG_EVERY,
                    logging.WARNING,
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

    async def _settle_ok(self, batch: Batch, lo: int, hi: int, answer: Answer) -> Outcome:
        rejected, message = parse_partial_success(answer.body)
        rejected = min(rejected, hi - lo)
        delivered = hi - lo - rejected
        if rejected or message:
            self._loud.log(
                "partial",
                RETRY_LOG_EVERY,
                logging.WARNING,
                f"collector {self._host} rejected {rejected} of {hi - lo} spans (partial success, not retried): {message[:500]}",
            )
        if self.receipts is not None:
            await self._write_durably(
                self.receipts, receipt_record(batch.sources[lo:hi], self._host, answer.status or 0, rejected)
            )
        self.state.export_succeeded(delivered, rejected)
        return Outcome(delivered=delivered, rejected=rejected)

    async def _dead_letter(self, batch: Batch, index: int, answer: Answer, reason: str) -> Outcome:
        source = batch.sources[index]
        await self._write_durably(self.dead_letter, dead_letter_record(source, self._host, answer.status, answer.body, reason))
        self.state.dead_lettered_spans += 1
        log.error(
            "collector refused a span for good (%s, HTTP %s); row at %s offset %d written to the dead-letter file %s",
            reason,
            answer.status,
            source.path,
            source.offset,
            self.dead_letter.path,
        )
        return Outcome(dead_lettered=1)

    async def _write_durably(self, target: DurableLog, record: dict[str, object]) -> None:
        backoff = Backoff(self.settings.initial_backoff, self.settings.max_backoff)
        await append_until_written(target, [record], backoff, self._sleep, self._loud)
