"""The hand-written OTLP protobuf encoder and answer decoder, checked against
opentelemetry-proto: every body is decoded with the official classes and compared field by
field with the OTLP/JSON of the same rows (real rows through the real mapping functions),
and the bytes equal the official serializer's for the same JSON."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from audit_otlp.delivery.answers import PartialSuccess, RpcStatus, decode_partial_success, decode_status
from audit_otlp.delivery.protobuf import ProtobufEnvelope, ProtobufError, encode_request, encode_span, encode_span_json
from audit_otlp.mapping.chain import ChainHasher, ChainState, verify_row
from audit_otlp.mapping.envelope import encode_span as encode_span_as_json
from audit_otlp.mapping.envelope import make_envelope, resource_attributes
from audit_otlp.mapping.evidence import chain_broken_span, malformed_span
from audit_otlp.mapping.ids import MappingOptions, line_digest
from audit_otlp.mapping.parse import parse_line
from audit_otlp.mapping.spans import row_span
from tests.helpers.auditgen import WEBFETCH_ROW

Request = trace_service_pb2.ExportTraceServiceRequest
OBSERVED = 1_700_000_000_000_000_000
JSON_ENVELOPE = make_envelope(resource_attributes("hydra.audit-trail", {"deployment.environment": "tëst"}, True))
ENVELOPE = ProtobufEnvelope.of(JSON_ENVELOPE.body([]))


# -- the comparison ------------------------------------------------------------------------


def official(doc: dict[str, Any]) -> Any:
    """OTLP/JSON parsed by opentelemetry-proto (ids are hex in OTLP/JSON, base64 in proto3)."""
    converted = orjson.loads(orjson.dumps(doc))
    for resource_spans in converted.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId"):
                    if span.get(key):
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json_format.ParseDict(converted, Request())


def plain_json(value: dict[str, Any]) -> tuple[str, Any]:
    ((kind, item),) = value.items()
    if kind == "intValue":
        return "int_value", int(item)
    if kind == "doubleValue":
        return "double_value", float(item)
    return {"stringValue": "string_value", "boolValue": "bool_value"}[kind], item


def plain_proto(value: AnyValue) -> tuple[str, Any]:
    kind = value.WhichOneof("value")
    assert kind is not None, "an AnyValue without a value"
    return kind, getattr(value, kind)


def same_attributes(ours: list[KeyValue], theirs: list[dict[str, Any]]) -> None:
    assert [kv.key for kv in ours] == [kv["key"] for kv in theirs]
    for kv, expected in zip(ours, theirs):
        kind, value = plain_proto(kv.value)
        want_kind, want = plain_json(expected["value"])
        assert kind == want_kind, kv.key
        assert type(value) is type(want) and value == want, kv.key


def assert_same_request(body: bytes, doc: dict[str, Any]) -> None:
    """The protobuf body says field for field what the OTLP/JSON document says."""
    message = Request.FromString(body)
    assert len(message.resource_spans) == len(doc["resourceSpans"])
    for rs, rs_json in zip(message.resource_spans, doc["resourceSpans"]):
        same_attributes(list(rs.resource.attributes), rs_json["resource"]["attributes"])
        assert len(rs.scope_spans) == len(rs_json["scopeSpans"])
        for ss, ss_json in zip(rs.scope_spans, rs_json["scopeSpans"]):
            assert ss.scope.name == ss_json["scope"]["name"]
            assert ss.scope.version == ss_json["scope"]["version"]
            assert len(ss.spans) == len(ss_json["spans"])
            for span, want in zip(ss.spans, ss_json["spans"]):
                assert span.trace_id.hex() == want["traceId"]
                assert span.span_id.hex() == want["spanId"]
                assert (span.name, span.kind) == (want["name"], want["kind"])
                assert span.start_time_unix_nano == int(want["startTimeUnixNano"])
                assert span.end_time_unix_nano == int(want["endTimeUnixNano"])
                same_attributes(list(span.attributes), want["attributes"])
                assert span.status.code == want["status"]["code"]
                assert span.status.message == want["status"].get("message", "")
                assert not span.parent_span_id and not span.events and not span.links
    # And nothing more or less than the official parse of the JSON, to the byte.
    assert message == official(doc)
    assert body == official(doc).SerializeToString()


def both_bodies(spans: list[dict[str, Any]]) -> tuple[bytes, dict[str, Any]]:
    """The protobuf body and the parsed JSON body of one request carrying `spans`."""
    as_json = [encode_span_as_json(span) for span in spans]
    records = [encode_span(span) for span in spans]  # from the dict, as the daemon does
    assert records == [encode_span_json(data) for data in as_json]
    return ENVELOPE.body(records), orjson.loads(JSON_ENVELOPE.body(as_json))


def mapped(lines: list[bytes], options: MappingOptions | None = None) -> list[dict[str, Any]]:
    """The spans the daemon makes of these lines, chain verdicts and evidence spans included."""
    options = options or MappingOptions()
    state, hasher, spans = ChainState(), ChainHasher(), []
    for number, line in enumerate(lines, 1):
        digest = line_digest(line)
        row, reason = parse_line(line)
        if row is None:
            assert reason is not None
            spans.append(
                malformed_span(
                    offset=number * 100,
                    length=len(line),
                    digest=digest,
                    reason=reason,
                    observed_ns=OBSERVED,
                )
            )
            continue
        verdict = verify_row(state, row, hasher, line)
        span = row_span(
            row,
            digest,
            offset=number * 100,
            observed_ns=OBSERVED,
            options=options,
            chain=verdict,
        )
        spans.append(span)
        if verdict.broken:
            spans.append(
                chain_broken_span(
                    verdict=verdict,
                    offset=number * 100,
                    line_number=number,
                    digest=digest,
                    start_ns=int(span["startTimeUnixNano"]),
                )
            )
    return spans


# -- rows as the daemon maps them ----------------------------------------------------------

ROWS: dict[str, bytes] = {
    "a_tool_call_with_every_field": orjson.dumps({**WEBFETCH_ROW, "prev_hash": "GENESIS"}),
    "a_secret_finding": b'{"event":"secret_detected","ts":"2026-04-15T14:23:01Z",'
    b'"file":"cfg.env","pattern_id":"aws-access-key-id","severity":"critical",'
    b'"masked":"AKIA...MPLE","prev_hash":"GENESIS"}',
    "a_blocked_action": b'{"event":"action_blocked","ts":"2026-04-15T14:23:02Z",'
    b'"reason":"rm -rf /","severity":"critical","prev_hash":"x"}',
    "an_error_row_with_free_text": b'{"event":"tool_use","tool":"Bash","ts":"2026-04-15T14:23:02Z",'
    b'"error":"exit status 1: no such file"}',
    "integers_beyond_int64_become_strings": b'{"event":"e","duration_ms":'
    b'123456789012345678901234567890,"bytes_in":-99999999999999999999}',
    "int64_extremes_and_negative_integers": b'{"event":"e","bytes_in":9223372036854775807,'
    b'"bytes_out":-9223372036854775808,"duration_ms":-1,"severity":-42}',
    "doubles": b'{"event":"e","duration_ms":1.5,"bytes_in":0.1,"bytes_out":-2.5e-300,"severity":1e300,"target":0.0}',
    "bools": b'{"event":"e","severity":true,"target":false,"tool":"t","dest_host":true}',
    "empty_strings": b'{"event":"","tool":"","target":"","session_id":"","severity":"","prev_hash":"","agent_id":""}',
    "unicode_everywhere": '{"event":"tööl_üse","tool":"写入","target":"😀 e\u0301 \u202e",'
    '"session_id":"séance","dest_host":"bücher.example","agent_name":"\\u0000nul"}'.encode(),
    "a_lone_surrogate_escape": b'{"event":"e","target":"bad \\ud800 half","tool":"\\udfff"}',
    "objects_arrays_and_nulls": b'{"event":"e","target":{"a":[1,2,{"b":null}]},'
    b'"tool":["x"],"severity":null,"session_id":{"k":1}}',
    "a_row_with_its_own_trace_id": b'{"event":"e","trace_id":"4BF92F3577B34DA6A3CE929D0E0E4736"}',
    "no_timestamp_uses_the_observed_time": b'{"event":"e","tool":"Read"}',
    "a_timestamp_before_1970_is_invalid": b'{"event":"e","ts":"1969-12-31T23:59:59Z"}',
    "a_chain_break": b'{"event":"e","prev_hash":"not-the-hash-of-the-row-before"}',
    "a_chain_restart": b'{"event":"e","prev_hash":"GENESIS"}',
    "not_json": b"{this is not json",
    "not_an_object": b"[1,2,3]",
    "not_utf8": b'{"event":"\xff\xfe"}',
}


@pytest.mark.parametrize("name", list(ROWS))
def test_one_row_encodes_as_its_json_says(name: str) -> None:
    # After a first row, so chain verdicts (and the evidence span of a break) appear too.
    spans = mapped([ROWS["a_tool_call_with_every_field"], ROWS[name]])
    assert_same_request(*both_bodies(spans))


def test_every_row_in_one_request_with_session_trace_ids() -> None:
    spans = mapped(list(ROWS.values()), MappingOptions(trace_id_from="session"))
    assert len(spans) > len(ROWS)  # the chain evidence spans are in
    assert_same_request(*both_bodies(spans))


def test_evidence_spans_encode_as_their_json_says() -> None:
    digest = line_digest(b"x")
    verdict = verify_row(ChainState(), {"prev_hash": "bad"}, ChainHasher(), b"x")
    spans = [
        malformed_span(
            offset=2**40,
            length=2**31,
            digest=digest,
            reason="too_deep",
            observed_ns=2**64 - 1,
        ),
        chain_broken_span(verdict=verdict, offset=0, line_number=1, digest=digest, start_ns=1),
    ]
    assert_same_request(*both_bodies(spans))


def test_an_empty_request_is_the_envelope_alone() -> None:
    assert_same_request(*both_bodies([]))
    assert encode_request(JSON_ENVELOPE.body([])) == ENVELOPE.body([])


# -- the envelope: splitting and sizes -----------------------------------------------------


def test_any_split_reencodes_nothing_and_each_part_is_a_valid_request() -> None:
    spans = mapped(list(ROWS.values()))
    as_json = [encode_span_as_json(span) for span in spans]
    records = [encode_span_json(data) for data in as_json]
    for cut in range(len(records) + 1):
        for lo, hi in ((0, cut), (cut, len(records))):
            part = orjson.loads(JSON_ENVELOPE.body(as_json[lo:hi]))
            assert_same_request(ENVELOPE.body(records[lo:hi]), part)


@pytest.mark.parametrize(
    "spans_bytes",
    # around the varint boundaries of the nested lengths (one, two, three, four bytes)
    [0, 1, 100, 127, 128, 16_000, 16_383, 16_384, 2_097_151, 2_097_152, 3_000_000],
)
def test_size_is_the_length_of_the_body(spans_bytes: int) -> None:
    assert ENVELOPE.size(spans_bytes, 7) == len(ENVELOPE.body([b"\x00" * spans_bytes]))


@pytest.mark.parametrize("target_length", range(15_700, 16_700, 37))
def test_lengths_across_a_varint_boundary_decode(target_length: int) -> None:
    # The span, the scope's spans and the resource's cross 16 KiB (two to three length bytes).
    line = orjson.dumps({"event": "tool_use", "tool": "Write", "target": "x" * target_length})
    assert_same_request(*both_bodies(mapped([line])))


def test_a_large_request_decodes_whole() -> None:
    rows = [orjson.dumps({"event": "tool_use", "tool": "Write", "target": "é" * 300, "n": i}) for i in range(700)]
    body, doc = both_bodies(mapped(rows))
    assert len(body) > 2**17  # three-byte lengths in the envelope
    assert_same_request(body, doc)


# -- whole requests and the AnyValue kinds we do not emit but accept -----------------------

OTHER_VALUES: dict[str, dict[str, Any]] = {
    "empty_array": {"arrayValue": {}},
    "array_of_mixed": {"arrayValue": {"values": [{"stringValue": ""}, {"intValue": "-3"}, {"boolValue": False}]}},
    "kvlist": {"kvlistValue": {"values": [{"key": "k", "value": {"doubleValue": 2.0}}]}},
    "bytes": {"bytesValue": base64.b64encode(b"\x00\xffraw").decode()},
    "nan_as_proto3_json_writes_it": {"doubleValue": "NaN"},
    "infinity": {"doubleValue": "-Infinity"},
    "an_integer_given_as_a_number": {"intValue": -7},
    "a_double_given_as_an_integer": {"doubleValue": 3},
    "false": {"boolValue": False},
    "zero": {"intValue": "0"},
    "empty_string": {"stringValue": ""},
}


@pytest.mark.parametrize("name", list(OTHER_VALUES))
def test_a_whole_json_request_encodes_as_the_official_serializer(name: str) -> None:
    doc = orjson.loads(JSON_ENVELOPE.body([encode_span_as_json(s) for s in mapped([b"{}"])]))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"].append({"key": name, "value": OTHER_VALUES[name]})
    span["attributes"].append({"key": "", "value": {"stringValue": "an empty key"}})
    doc["resourceSpans"].append(doc["resourceSpans"][0])  # several resources and scopes
    doc["resourceSpans"][1] = {
        "resource": {},
        "scopeSpans": [{"spans": []}, {"scope": {}}],
    }
    theirs = official(doc).SerializeToString()
    assert encode_request(doc) == theirs
    assert encode_request(orjson.dumps(doc)) == theirs
    value = Request.FromString(theirs).resource_spans[0].scope_spans[0].spans[0].attributes[-2]
    if name.startswith(("nan", "infinity")):
        assert math.isnan(value.value.double_value) or math.isinf(value.value.double_value)


REFUSED: dict[str, tuple[str, Any]] = {
    "a_span_field_outside_the_subset": ("events", []),
    "a_parent_span_id": ("parentSpanId", "00f067aa0ba902b7"),
    "an_id_that_is_not_hex": ("spanId", "xyz"),
    "a_time_that_is_not_a_number": ("startTimeUnixNano", "soon"),
    "a_negative_time": ("endTimeUnixNano", "-1"),
    "a_time_beyond_fixed64": ("startTimeUnixNano", str(2**64)),
    "a_name_that_is_not_a_string": ("name", 7),
    "an_unknown_status_field": ("status", {"code": 2, "why": "x"}),
    "an_unknown_value_kind": ("attributes", [{"key": "k", "value": {"mapValue": {}}}]),
    "two_values_in_one": (
        "attributes",
        [{"key": "k", "value": {"stringValue": "a", "intValue": "1"}}],
    ),
    "an_int_beyond_int64": (
        "attributes",
        [{"key": "k", "value": {"intValue": str(2**63)}}],
    ),
    "an_int_that_is_a_float": (
        "attributes",
        [{"key": "k", "value": {"intValue": "1.5"}}],
    ),
    "a_bool_that_is_a_string": (
        "attributes",
        [{"key": "k", "value": {"boolValue": "true"}}],
    ),
    "a_double_that_is_a_word": (
        "attributes",
        [{"key": "k", "value": {"doubleValue": "many"}}],
    ),
    "a_value_that_is_not_an_object": ("attributes", [{"key": "k", "value": "text"}]),
    "attributes_that_are_not_a_list": ("attributes", {"k": {"stringValue": "v"}}),
    "a_key_that_is_not_a_string": (
        "attributes",
        [{"key": 1, "value": {"stringValue": "v"}}],
    ),
    "a_status_that_is_not_an_object": ("status", "OK"),
    "bytes_that_are_not_base64": (
        "attributes",
        [{"key": "k", "value": {"bytesValue": "!!"}}],
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_anything_outside_the_subset_is_refused_not_dropped(name: str) -> None:
    key, value = REFUSED[name]
    span = mapped([b"{}"])[0]
    span[key] = value
    with pytest.raises(ProtobufError):
        encode_span(span)


@pytest.mark.parametrize(
    "request_doc",
    [
        b"not json",
        b"[1]",
        {"resourceSpans": [], "extra": 1},
        {"resourceSpans": [{"schemaUrl": "x"}]},
        {"resourceSpans": [{"scopeSpans": [{"scope": {"droppedAttributesCount": 1}}]}]},
    ],
    ids=["not_json", "not_an_object", "request_field", "schema_url", "scope_field"],
)
def test_a_request_outside_the_subset_is_refused(request_doc: Any) -> None:
    with pytest.raises(ProtobufError):
        encode_request(request_doc)


def test_an_envelope_is_one_resource_and_one_scope() -> None:
    with pytest.raises(ProtobufError):
        ProtobufEnvelope.of({"resourceSpans": []})
    two_scopes = {"resourceSpans": [{"scopeSpans": [{}, {}]}]}
    with pytest.raises(ProtobufError):
        ProtobufEnvelope.of(two_scopes)
    bare = ProtobufEnvelope.of({"resourceSpans": [{"scopeSpans": [{}]}]})
    assert Request.FromString(bare.body([])) == official({"resourceSpans": [{"scopeSpans": [{}]}]})


# -- any row -------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
FIELDS = [
    "event", "tool", "target", "file", "severity", "session_id", "agent_id", "agent_name",
    "duration_ms", "bytes_in", "bytes_out", "dest_host", "policy_outcome", "outcome",
    "error", "error_type", "reason", "tool_use_id", "prev_hash", "ts", "trace_id",
]  # fmt: skip
rows = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=10)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows, min_size=1, max_size=5))
def test_any_rows_encode_as_their_json_says(batch: list[dict[str, Any]]) -> None:
    # json.dumps, not orjson: it writes integers beyond 64 bits and lone surrogates too.
    lines = [json.dumps(row).encode() for row in batch]
    assert_same_request(*both_bodies(mapped(lines)))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(), st.text(), max_size=5), st.text())
def test_any_resource_attributes_make_the_same_envelope(extra: dict[str, str], service: str) -> None:
    json_envelope = make_envelope(resource_attributes(service, extra, False))
    envelope = ProtobufEnvelope.of(json_envelope.body([]))
    spans = mapped([b'{"event":"e"}'])
    doc = orjson.loads(json_envelope.body([encode_span_as_json(s) for s in spans]))
    assert_same_request(envelope.body([encode_span(s) for s in spans]), doc)


# -- answers -------------------------------------------------------------------------------

Response = trace_service_pb2.ExportTraceServiceResponse


@given(rejected=st.integers(min_value=-(2**63), max_value=2**63 - 1), message=st.text())
def test_partial_success_reads_what_the_official_serializer_writes(rejected: int, message: str) -> None:
    body = Response(partial_success={"rejected_spans": rejected, "error_message": message}).SerializeToString()
    assert decode_partial_success(body) == PartialSuccess(rejected, message)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", PartialSuccess(0, "")),  # full success, as Sentry's 202
        (Response().SerializeToString(), PartialSuccess(0, "")),
        (Response(partial_success={}).SerializeToString(), PartialSuccess(0, "")),
        (Response(partial_success={"error_message": "slow down"}).SerializeToString(),
         PartialSuccess(0, "slow down")),  # a warning
        # unknown fields before and inside, as a newer server may send
        (b"\x10\x05" + b"\x0a\x06\x08\x03\x18\x07\x12\x00", PartialSuccess(3, "")),
        (b"\x0a\x03\x12\x01\xff", PartialSuccess(0, "\ufffd")),  # bad UTF-8 is shown, not fatal
    ],
    ids=["empty", "no_partial_success", "empty_partial_success", "warning", "unknown_fields", "bad_utf8"],
)  # fmt: skip
def test_partial_success_cases(body: bytes, expected: PartialSuccess) -> None:
    assert decode_partial_success(body) == expected


@given(
    code=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    message=st.text(),
    details=st.lists(st.text(min_size=1), max_size=3),
)
def test_status_reads_what_the_official_serializer_writes(code: int, message: str, details: list[str]) -> None:
    status = status_pb2.Status(code=code, message=message)
    for type_url in details:
        status.details.add(type_url=type_url, value=b"\x0a\x01x")
    assert decode_status(status.SerializeToString()) == RpcStatus(code, message, tuple(details))


@pytest.mark.parametrize(
    "body",
    [b"\x0a\x05ab", b"\x08", b"\x08" + b"\xff" * 10, b"\x0b", b"\x00\x00", b"\x09\x01"],
    ids=["truncated_string", "truncated_varint", "overlong_varint", "group", "field_zero", "short_fixed64"],
)  # fmt: skip
def test_a_body_that_is_not_protobuf_raises(body: bytes) -> None:
    with pytest.raises(ProtobufError):
        decode_status(body)
    with pytest.raises(ProtobufError):
        decode_partial_success(body)
