"""Prometheus metrics, owned by one Metrics object per daemon (no module-level registry).

The counts that the checkpoint and `status` also show (delivered, rejected, dead-lettered,
chain breaks, lines read) are not kept here: they live once, in `RunState`, and are read from it
at each scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from audit_otlp.runtime.runstate import RunState

PREFIX = "audit_otlp"


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, state: RunState) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        r.register(_RunStateCounts(state))
        self.export_requests = Counter(
            f"{PREFIX}_export_requests", "Export requests by outcome (HTTP status, or 'error').", ["status"], registry=r
        )
        self.export_retries = Counter(f"{PREFIX}_export_retries", "Export attempts that will be retried.", registry=r)
        self.malformed_lines = Counter(
            f"{PREFIX}_malformed_lines", "Lines that were not a JSON object, not UTF-8, or too long.", ["reason"], registry=r
        )
        self.resume_gaps = Counter(f"{PREFIX}_resume_gaps", "Rows that vanished unseen (reported once per gap).", registry=r)
        self.spooled_bytes = Counter(
            f"{PREFIX}_spooled_bytes", "Undelivered bytes of vanished file versions copied to the spool.", registry=r
        )
        self.spool_cut_bytes = Counter(
            f"{PREFIX}_spool_cut_bytes",
            "Undelivered bytes past source.spool_max_bytes that the spool could not keep.",
            registry=r,
        )
        self.spool_errors = Counter(
            f"{PREFIX}_spool_errors", "Vanished versions that could not be spooled (disk full...).", registry=r
        )
        self.rotations = Counter(f"{PREFIX}_rotations", "Rotations noticed, by kind.", ["kind"], registry=r)
        self.checkpoint_errors = Counter(f"{PREFIX}_checkpoint_write_errors", "Failed checkpoint writes.", registry=r)
        self.backlog_bytes = Gauge(f"{PREFIX}_backlog_bytes", "Bytes of the audit log not yet delivered.", registry=r)
        self.rotated_files_held = Gauge(f"{PREFIX}_rotated_files_held", "Rotated files held open until drained.", registry=r)
        self.rotated_bytes_pending = Gauge(
            f"{PREFIX}_rotated_bytes_pending", "Unread bytes in rotated files held open.", registry=r
        )
        self.export_duration = Histogram(
            f"{PREFIX}_export_request_duration_seconds",
            "Time from sending an export request to its answer (or failure).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.in_flight = Gauge(f"{PREFIX}_requests_in_flight", "Export requests being sent or retried.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RunStateCounts(Collector):
    """The counts of `RunState` as Prometheus counters (this run's, as a counter should be)."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        for name, doc, value in (
            ("spans_delivered", "Spans acknowledged by a collector with 2xx, minus rejected ones.", state.delivered_spans),
            ("spans_rejected", "Spans a collector reported as rejected in partialSuccess.", state.rejected_spans),
            ("spans_dead_lettered", "Spans refused for good and written to the dead-letter file.", state.dead_lettered_spans),
            ("lines_read", "Lines read from the audit log.", state.rows_read),
            ("chain_breaks", "Rows whose prev_hash names no line we know (verdict break).", state.chain_breaks),
            ("chain_forks", "Rows whose prev_hash names an earlier line, not the one before (verdict fork).", state.chain_forks),
        ):
            yield CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
        yield GaugeMetricFamily(
            f"{PREFIX}_last_success_timestamp_seconds",
            "Unix time of the last 2xx (0: none yet).",
            value=state.last_success_unix or 0.0,
        )
