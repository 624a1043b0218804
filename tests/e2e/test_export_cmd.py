"""`audit-otlp export FILE`: one complete ExportTraceServiceRequest per output line, each one
accepted by a collector on its own; span count = rows (+ evidence spans)."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from tests.helpers.auditgen import AuditWriter, append_bytes
from tests.helpers.collector import Collector, attrs


def export(cli: str, path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_OTLP_", "OTEL_", "SENTRY_", "DD_"))}
    full_env.update(env or {})
    return subprocess.run([cli, "export", str(path), *args], capture_output=True, timeout=60, env=full_env)


def post(endpoint: str, body: bytes) -> int:
    request = urllib.request.Request(endpoint, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        return response.status


def spans_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]


def test_every_line_is_a_request_the_collector_accepts(tmp_path: Path, audit_cli: str) -> None:
    audit = tmp_path / "audit.jsonl"
    AuditWriter(audit).append(1300)  # more than one batch (512 spans)
    append_bytes(audit, b"not json\n\n")
    AuditWriter(audit, session="s-2").append(5)  # GENESIS again: a reported restart
    append_bytes(audit, b'{"event":"tool_use","tool":"Read","prev_hash":"GENESIS"}')  # no final newline

    result = export(audit_cli, audit)
    assert result.returncode == 0, result.stderr
    bodies = result.stdout.splitlines()
    assert len(bodies) >= 3
    with Collector() as collector:
        for body in bodies:
            assert post(collector.endpoint, body) == 200
        assert not collector.invalid
        spans = collector.accepted_spans()
    names = [s["name"] for s in spans]
    assert names.count("audit.malformed_line") == 1
    assert names.count("audit.chain_broken") == 2  # the two GENESIS restarts
    assert len(spans) == 1300 + 1 + 5 + 1 + 2
    for body in bodies:  # one resourceSpans / scopeSpans per request, with the resource
        doc = orjson.loads(body)
        assert len(doc["resourceSpans"]) == 1 and len(doc["resourceSpans"][0]["scopeSpans"]) == 1
        resource = {kv["key"]: kv["value"]["stringValue"] for kv in doc["resourceSpans"][0]["resource"]["attributes"]}
        assert resource["service.name"] == "hydra.audit-trail" and resource["dd_llmobs_enabled"] == "true"


def test_export_is_deterministic_and_ids_match_the_daemon_mapping(tmp_path: Path, audit_cli: str) -> None:
    audit = tmp_path / "audit.jsonl"
    AuditWriter(audit).append(20)
    first, second = export(audit_cli, audit), export(audit_cli, audit)
    ids = lambda out: [(s["traceId"], s["spanId"]) for line in out.stdout.splitlines() for s in spans_of(orjson.loads(line))]  # noqa: E731
    assert ids(first) == ids(second) and len(set(ids(first))) == 20


def test_trace_id_from_session(tmp_path: Path, audit_cli: str) -> None:
    audit = tmp_path / "audit.jsonl"
    AuditWriter(audit, session="s-A").append(5)
    config = tmp_path / "c.toml"
    config.write_text('[mapping]\ntrace_id_from = "session"\ndd_llmobs_enabled = false\n')
    by_session = [
        s for line in export(audit_cli, audit, "--config", str(config)).stdout.splitlines() for s in spans_of(orjson.loads(line))
    ]
    assert len({s["traceId"] for s in by_session}) == 1
    assert all(attrs(s)["gen_ai.conversation.id"] == "s-A" for s in by_session)
    by_prev_hash = [s for line in export(audit_cli, audit).stdout.splitlines() for s in spans_of(orjson.loads(line))]
    assert len({s["traceId"] for s in by_prev_hash}) == 5
    body = orjson.loads(export(audit_cli, audit, "--config", str(config)).stdout.splitlines()[0])
    resource = {kv["key"]: kv["value"]["stringValue"] for kv in body["resourceSpans"][0]["resource"]["attributes"]}
    assert resource["dd_llmobs_enabled"] == "false"


def test_unreadable_file(tmp_path: Path, audit_cli: str) -> None:
    result = export(audit_cli, tmp_path / "missing.jsonl")
    assert result.returncode == 2 and b"cannot read" in result.stderr and result.stdout == b""
