"""config/fleet/gateway/otelcol-gateway.yaml: once the gateway has answered 2xx, audit-otlp's
checkpoint has moved, so nothing the gateway accepted may be held only in memory or given up
on; its listeners stay on loopback or the pod's own address; credentials come from the
environment. Each invariant is also shown to catch a copy broken on purpose."""

from __future__ import annotations

import pytest

from tests.unit.config.fleet_checks import (
    FLEET,
    Mutation,
    claim_mounts,
    collector,
    collector_violations,
    deep_merge,
    gateway,
    load,
    set_path,
)


def test_gateway_config_keeps_every_accepted_span_on_disk_and_retries_forever() -> None:
    assert collector_violations(collector(), claim_mounts(gateway())) == []


def test_the_tls_overlay_for_gateway_vms_keeps_the_same_invariants() -> None:
    overlay = load(FLEET / "host" / "otelcol-gateway-tls.yaml")[0]
    merged = deep_merge(collector(), overlay)
    assert merged["receivers"]["otlp"]["protocols"]["http"]["tls"]["key_file"]
    assert collector_violations(merged, claim_mounts(gateway())) == []


def test_the_queue_is_bounded_in_bytes_and_refuses_rather_than_blocks_when_full() -> None:
    # Many sidecars send many small requests: a count of requests would fill in seconds.
    for name, exporter in collector()["exporters"].items():
        queue = exporter["sending_queue"]
        assert queue["sizer"] == "bytes" and queue["block_on_overflow"] is False, name
        assert queue["batch"]["max_size"] <= 512, name  # far under Datadog's payload limit


def test_datadog_goes_through_its_otlp_intake_not_the_buffering_datadog_exporter() -> None:
    exporters = collector()["exporters"]
    assert not [name for name in exporters if name.split("/")[0] == "datadog"]
    datadog = exporters["otlp_http/datadog"]
    assert datadog["traces_endpoint"] == "https://otlp.${env:DD_SITE}/v1/traces"
    assert datadog["headers"] == {
        "dd-api-key": "${env:DD_API_KEY}",
        "dd-otlp-source": "llmobs",
    }
    sentry = exporters["otlp_http/sentry"]
    assert sentry["traces_endpoint"] == "${env:SENTRY_OTLP_TRACES_ENDPOINT}"
    assert sentry["headers"] == {"x-sentry-auth": "sentry sentry_key=${env:SENTRY_PUBLIC_KEY}"}


BREAKS = [
    (
        "retries give up after five minutes",
        "exporters.otlp_http/sentry.retry_on_failure.max_elapsed_time",
        "300s",
        "max_elapsed_time",
    ),
    (
        "a queue held only in memory",
        "exporters.otlp_http/datadog.sending_queue.storage",
        None,
        "storage",
    ),
    (
        "a batch processor acknowledging from memory",
        "service.pipelines.traces.processors",
        ["memory_limiter", "batch"],
        "in memory",
    ),
    (
        "memory_limiter after another processor",
        "service.pipelines.traces.processors",
        ["attributes", "memory_limiter"],
        "first",
    ),
    (
        "a queue on a path with no volume",
        "extensions.file_storage/queue.directory",
        "/tmp/queue",
        "persistent volume",
    ),
    (
        "a queue written without fsync",
        "extensions.file_storage/queue.fsync",
        False,
        "persistent volume",
    ),
    (
        "a queue extension missing from service.extensions",
        "service.extensions",
        ["health_check"],
        "service.extensions",
    ),
    (
        "a receiver on every interface",
        "receivers.otlp.protocols.http.endpoint",
        "0.0.0.0:4318",
        "listen",
    ),
    (
        "an API key written into the file",
        "exporters.otlp_http/datadog.headers.dd-api-key",
        "0123456789abcdef0123456789abcdef",
        "credential",
    ),
    (
        "a Sentry key written into the file",
        "exporters.otlp_http/sentry.headers.x-sentry-auth",
        "sentry sentry_key=abc",
        "credential",
    ),
]


@pytest.mark.parametrize(("path", "value", "expected"), [b[1:] for b in BREAKS], ids=[b[0] for b in BREAKS])
def test_a_broken_gateway_config_is_caught(path: str, value: object, expected: str) -> None:
    cfg = collector()
    mutate: Mutation = set_path(path, value)
    mutate(cfg)
    violations = collector_violations(cfg, claim_mounts(gateway()))
    assert any(expected in v for v in violations), violations
