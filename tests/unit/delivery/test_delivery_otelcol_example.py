"""config/otelcol-example.yaml: every component a pipeline names is defined, credentials come
from the environment, and nothing in it can silently discard audit spans."""

from __future__ import annotations

import yaml

from tests.helpers.paths import REPO

EXAMPLE = REPO / "config" / "otelcol-example.yaml"


def load() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_pipelines_reference_only_defined_components() -> None:
    doc = load()
    connectors = set(doc.get("connectors") or {})
    for name, pipeline in doc["service"]["pipelines"].items():
        for receiver in pipeline["receivers"]:
            assert receiver in (doc["receivers"] or {}) or receiver in connectors, (name, receiver)
        for processor in pipeline.get("processors", []):
            assert processor in doc["processors"], (name, processor)
        for exporter in pipeline["exporters"]:
            assert exporter in doc["exporters"] or exporter in connectors, (name, exporter)
        assert name.split("/")[0] in ("traces", "metrics", "logs")
    for extension in doc["service"].get("extensions", []):
        assert extension in doc["extensions"]
    # a connector must be an exporter in one pipeline and a receiver in another
    for connector in connectors:
        pipelines = doc["service"]["pipelines"].values()
        assert any(connector in p["exporters"] for p in pipelines) and any(connector in p["receivers"] for p in pipelines)


def test_otlp_http_receiver_and_batch_then_datadog_and_sentry() -> None:
    doc = load()
    traces = doc["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"] and "http" in doc["receivers"]["otlp"]["protocols"]
    assert traces["processors"][-1] == "batch"
    assert "datadog" in traces["exporters"] and "otlphttp/sentry" in traces["exporters"]
    sentry = doc["exporters"]["otlphttp/sentry"]
    assert sentry["traces_endpoint"] == "${env:SENTRY_OTLP_TRACES_ENDPOINT}"
    assert sentry["headers"]["x-sentry-auth"] == "sentry sentry_key=${env:SENTRY_PUBLIC_KEY}"
    assert doc["exporters"]["datadog"]["api"] == {"key": "${env:DD_API_KEY}", "site": "${env:DD_SITE}"}


def test_no_exporter_gives_up_or_queues_only_in_memory() -> None:
    doc = load()
    for name, exporter in doc["exporters"].items():
        assert exporter["retry_on_failure"]["max_elapsed_time"] == 0, name
        assert exporter["sending_queue"]["storage"] in doc["extensions"], name
