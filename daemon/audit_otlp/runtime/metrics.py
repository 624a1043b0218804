"""Prometheus metrics, owned by one Metrics object per daemon (no module-level registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "audit_otlp"


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.spans_delivered = Counter(f"{PREFIX}_spans_delivered", "Spans acknowledged by a collector with 2xx, minus rejected ones.", registry=r)
        self.spans_rejected = Counter(f"{PREFIX}_spans_rejected", "Spans a collector reported as rejected in partialSuccess.", registry=r)
        self.spans_dead_lettered = Counter(f"{PREFIX}_spans_dead_lettered", "Spans refused for good and written to the dead-letter file.", registry=r)
        self.export_requests = Counter(f"{PREFIX}_export_requests", "Export requests by outcome (HTTP status, or 'error').", ["status"], registry=r)
        self.export_retries = Counter(f"{PREFIX}_export_retries", "Export attempts that will be retried.", registry=r)
        self.lines_read = Counter(f"{PREFIX}_lines_read", "Lines read from the audit log.", registry=r)
        self.malformed_lines = Counter(f"{PREFIX}_malformed_lines", "Lines that were not a JSON object, not UTF-8, or too long.", ["reason"], registry=r)
        self.chain_breaks = Counter(f"{PREFIX}_chain_breaks", "Rows whose prev_hash names no line we know (verdict break).", registry=r)
        self.chain_forks = Counter(f"{PREFIX}_chain_forks", "Rows whose prev_hash names an earlier line, not the one just before (verdict fork).", registry=r)
        self.resume_gaps = Counter(f"{PREFIX}_resume_gaps", "Restarts whose resume point could not be found.", registry=r)
        self.rotations = Counter(f"{PREFIX}_rotations", "Rotations noticed, by kind.", ["kind"], registry=r)
        self.checkpoint_errors = Counter(f"{PREFIX}_checkpoint_write_errors", "Failed checkpoint writes.", registry=r)
        self.backlog_bytes = Gauge(f"{PREFIX}_backlog_bytes", "Bytes of the audit log not yet delivered.", registry=r)
        self.last_success = Gauge(f"{PREFIX}_last_success_timestamp_seconds", "Unix time of the last 2xx.", registry=r)
        self.rotated_files_held = Gauge(f"{PREFIX}_rotated_files_held", "Rotated files held open until drained.", registry=r)
        self.rotated_bytes_pending = Gauge(f"{PREFIX}_rotated_bytes_pending", "Unread bytes in rotated files held open.", registry=r)
        self.export_duration = Histogram(
            f"{PREFIX}_export_request_duration_seconds", "Time from sending an export request to its answer (or failure).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0), registry=r,
        )
        self.in_flight = Gauge(f"{PREFIX}_requests_in_flight", "Export requests being sent or retried.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
