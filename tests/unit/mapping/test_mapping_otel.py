"""Our OTLP/JSON against the OpenTelemetry project's own Python OTLP/JSON encoder
(opentelemetry-exporter-otlp-json-common): the same spans, built as SDK ReadableSpans, must
encode to the same JSON (hex ids, times and intValues as strings, kind and status as ints)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

pytest.importorskip("opentelemetry.exporter.otlp.json.common")

from opentelemetry.exporter.otlp.json.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: E402
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode  # noqa: E402

from audit_otlp import __version__  # noqa: E402
from audit_otlp.mapping.chain import ChainHasher, ChainState, verify_row  # noqa: E402
from audit_otlp.mapping.envelope import SCOPE_NAME, encode_span, make_envelope, resource_attributes
from audit_otlp.mapping.ids import MappingOptions, line_digest
from audit_otlp.mapping.spans import row_span
from tests.helpers.collector import to_proto  # noqa: E402

ROWS = [
    {
        "event": "tool_use",
        "ts": "2026-04-15T14:23:03.250Z",
        "tool": "WebFetch",
        "session_id": "s-42",
        "duration_ms": 42,
        "bytes_in": 120,
        "bytes_out": 5120,
        "dest_host": "example.com",
        "policy_outcome": "allowed",
        "prev_hash": "GENESIS",
    },
    {"event": "action_blocked", "ts": "2026-04-15T14:23:02Z", "reason": "rm -rf /", "severity": "critical", "prev_hash": "abc="},
    {
        "event": "tool_use",
        "ts": "2026-04-15T14:23:04Z",
        "tool": "Bash",
        "error": "ENOENT",
        "duration_ms": 1.5,
        "bytes_in": -(2**63),
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "tool_use_id": "toolu_9",
    },
    {
        "event": "secret_detected",
        "ts": "2026-04-15T14:23:01Z",
        "file": "cfg.env",
        "severity": "critical",
        "score": 0.25,
        "agent_id": "agent-1",
    },
]


def plain(value: dict[str, Any]) -> Any:
    ((kind, v),) = value.items()
    return {"intValue": int, "stringValue": str, "boolValue": bool, "doubleValue": float}[kind](v)


def as_readable_span(ours: dict[str, Any], resource: Resource) -> ReadableSpan:
    status = ours["status"]
    return ReadableSpan(
        name=ours["name"],
        context=SpanContext(int(ours["traceId"], 16), int(ours["spanId"], 16), is_remote=False),
        parent=None,
        resource=resource,
        attributes={kv["key"]: plain(kv["value"]) for kv in ours["attributes"]},
        kind=SpanKind.INTERNAL,
        status=Status(StatusCode.ERROR, status["message"]) if status["code"] == 2 else Status(StatusCode.OK),
        start_time=int(ours["startTimeUnixNano"]),
        end_time=int(ours["endTimeUnixNano"]),
        instrumentation_scope=InstrumentationScope(SCOPE_NAME, __version__),
    )


def test_same_json_as_the_opentelemetry_encoder() -> None:
    attributes = resource_attributes("hydra.audit-trail", {"deployment.environment": "test"}, True)
    envelope = make_envelope(attributes)
    state, hasher = ChainState(), ChainHasher()
    encoded = []
    for row in ROWS:
        line = orjson.dumps(row)
        verdict = verify_row(state, row, hasher, line)
        encoded.append(
            encode_span(row_span(row, line_digest(line), offset=7, observed_ns=1, options=MappingOptions(), chain=verdict))
        )
    ours = orjson.loads(envelope.body(encoded))
    theirs = encode_spans(
        [as_readable_span(s, Resource(attributes)) for s in ours["resourceSpans"][0]["scopeSpans"][0]["spans"]]
    ).to_dict()
    for span in theirs["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        assert span.pop("flags") == 0x100  # the SDK's "parent is not remote"; optional, we leave it out
    assert ours == theirs
    # spot checks of the encoding rules themselves
    first = ours["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert isinstance(first["startTimeUnixNano"], str) and first["kind"] == 1 and first["status"] == {"code": 1}
    ints = [kv["value"] for kv in first["attributes"] if "intValue" in kv["value"]]
    assert ints and all(isinstance(v["intValue"], str) for v in ints)
    to_proto(ours)  # and the official proto accepts it
