"""Row -> span (README, "Spans"): ids, times, attributes and their types, status, the
GenAI conventions Datadog LLM Observability and Sentry read, and robustness on any row."""

from __future__ import annotations

import calendar
import json
import os
import re
import subprocess
import sys
from datetime import UTC
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_otlp.mapping.chain import ChainHasher, ChainState, verify_row
from audit_otlp.mapping.envelope import encode_span, make_envelope, resource_attributes
from audit_otlp.mapping.evidence import chain_broken_span, malformed_span
from audit_otlp.mapping.ids import MappingOptions, line_digest
from audit_otlp.mapping.parse import parse_line, parse_timestamp_ns
from audit_otlp.mapping.spans import row_span
from tests.helpers.auditgen import WEBFETCH_ROW
from tests.helpers.collector import attrs, to_proto

OBSERVED = 1_700_000_000_000_000_000
HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")
# 2026-04-15T14:23:03.250Z, computed independently of the code under test
TS_NS = calendar.timegm((2026, 4, 15, 14, 23, 3)) * 1_000_000_000 + 250_000_000


def span_of(
    row: dict[str, Any],
    options: MappingOptions = MappingOptions(),  # noqa: B008 - frozen
    chain: bool = False,
    line: bytes | None = None,
) -> dict[str, Any]:
    line = line if line is not None else json.dumps(row).encode()
    verdict = verify_row(ChainState(), row, ChainHasher(), line) if chain else None
    span = row_span(row, line_digest(line), offset=123, observed_ns=OBSERVED, options=options, chain=verdict)
    # What goes on the wire, read back: the checks below see the encoded form.
    return orjson.loads(encode_span(span))


def valid_request(spans: list[dict[str, Any]]) -> None:
    envelope = make_envelope(resource_attributes("svc", {}, True))
    to_proto(orjson.loads(envelope.body([orjson.dumps(s) for s in spans])))


TOOL_ROW = {
    **WEBFETCH_ROW,
    "severity": "info",
    "prev_hash": "abc=",
    "unknown_field": {"ignored": True},
}


# -- ids ------------------------------------------------------------------------------------


def test_ids_are_lower_hex_and_deterministic() -> None:
    a, b = span_of(TOOL_ROW), span_of(dict(TOOL_ROW))
    assert HEX32.fullmatch(a["traceId"]) and HEX16.fullmatch(a["spanId"])
    assert (a["traceId"], a["spanId"]) == (b["traceId"], b["spanId"])
    assert "parentSpanId" not in a


def test_different_rows_and_prev_hashes_give_different_ids() -> None:
    other = span_of({**TOOL_ROW, "prev_hash": "xyz="})
    base = span_of(TOOL_ROW)
    assert other["traceId"] != base["traceId"] and other["spanId"] != base["spanId"]
    same_prev = span_of({**TOOL_ROW, "target": "elsewhere"})
    assert same_prev["traceId"] == base["traceId"] and same_prev["spanId"] != base["spanId"]


def test_own_trace_id_is_used_as_is() -> None:
    own = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span_of({**TOOL_ROW, "trace_id": own})["traceId"] == own
    assert span_of({**TOOL_ROW, "trace_id": own.upper()})["traceId"] == own  # lower-case on the wire
    for bad in ("0" * 32, "xyz", own[:30], 12345, None):
        assert span_of({**TOOL_ROW, "trace_id": bad})["traceId"] != own
        assert span_of({**TOOL_ROW, "trace_id": bad})["traceId"].strip("0")


def test_trace_id_from_session_groups_a_session() -> None:
    session = MappingOptions(trace_id_from="session")
    one = span_of({**TOOL_ROW, "prev_hash": "a="}, session)
    two = span_of({**TOOL_ROW, "prev_hash": "b="}, session)
    other_session = span_of({**TOOL_ROW, "session_id": "s-43"}, session)
    assert one["traceId"] == two["traceId"] != other_session["traceId"]
    # prev_hash (the default) keeps every row in its own trace
    assert span_of({**TOOL_ROW, "prev_hash": "a="})["traceId"] != span_of({**TOOL_ROW, "prev_hash": "b="})["traceId"]
    # no session: falls back to prev_hash
    no_session = {k: v for k, v in TOOL_ROW.items() if k != "session_id"}
    assert span_of(no_session, session)["traceId"] == span_of(no_session)["traceId"]


def test_ids_never_all_zero() -> None:
    from audit_otlp.mapping.ids import nonzero_hex

    assert nonzero_hex(b"\0" * 16) == "0" * 31 + "1"
    assert nonzero_hex(b"\0" * 8) == "0" * 15 + "1"


# -- times ----------------------------------------------------------------------------------


def test_times_from_ts_and_duration() -> None:
    span = span_of(TOOL_ROW)
    assert span["startTimeUnixNano"] == str(TS_NS)
    assert span["endTimeUnixNano"] == str(TS_NS + 42_000_000)
    fractional = span_of({**TOOL_ROW, "duration_ms": 1.5})
    assert int(fractional["endTimeUnixNano"]) - int(fractional["startTimeUnixNano"]) == 1_500_000
    for bad in (-5, "42", True, None, 10**30):
        bad_span = span_of({**TOOL_ROW, "duration_ms": bad})
        assert bad_span["endTimeUnixNano"] == bad_span["startTimeUnixNano"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2026-04-15T14:23:00Z", 1776262980_000000000),
        ("2026-04-15T14:23:00.5Z", 1776262980_500000000),
        ("2026-04-15T14:23:00.123456789123Z", 1776262980_123456789),
        ("2026-04-15T16:23:00+02:00", 1776262980_000000000),
        ("2026-04-15T09:23:00-0500", 1776262980_000000000),
        ("2026-04-15t14:23:00z", 1776262980_000000000),
        ("1970-01-01T00:00:00Z", 0),
        ("2026-04-15T14:23:00.000000001Z", 1776262980_000000001),
        ("2026-04-15T14:23:00,1234567+00:00", 1776262980_123456700),
        ("2016-12-31T23:59:60Z", calendar.timegm((2017, 1, 1, 0, 0, 0)) * 10**9),  # leap second
        ("2026-04-15T14:23:00.999999Z", 1776262980_999999000),
        ("2026-04-15T14:23:00.5-00:30", 1776264780_500000000),
    ],
)
def test_parse_timestamp(text: str, expected: int) -> None:
    assert parse_timestamp_ns(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-30T00:00:00Z",
        "2026-04-15T24:00:00Z",
        "2026-04-15",
        "2026-04-15T14:23:00",
        "1969-12-31T23:59:59Z",
        "9999-12-31T23:59:59Z",
        "２０２６-04-15T14:23:00Z",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00+01:00",
        "2026-04-15T14:23:00.1234567",
        "2026-04-15T14:23:00Z\n",
        1776262980,
        None,
    ],
)
def test_bad_timestamps_fall_back_to_observed_time(text: Any) -> None:
    assert parse_timestamp_ns(text) is None
    span = span_of({**TOOL_ROW, "ts": text})
    assert span["startTimeUnixNano"] == str(OBSERVED) and attrs(span)["audit.ts_invalid"] is True


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 2**64 // 10**9 - 86400 * 2),
    st.integers(0, 999_999_999),
    st.integers(0, 9),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
    st.sampled_from(["T", "t", " "]),
    st.booleans(),
)
def test_fast_and_exact_timestamp_parsers_agree(
    seconds: int, nanos: int, digits: int, offset_min: int, sep: str, zulu: bool
) -> None:
    from datetime import datetime, timedelta

    from audit_otlp.mapping.parse import _parse_rfc3339_ns

    offset = timedelta(minutes=0 if zulu else offset_min)
    local = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds) + offset
    frac = f"{nanos:09d}"[:digits]
    sign = "-" if offset_min < 0 else "+"
    tz = "Z" if zulu else f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    text = local.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + (f".{frac}" if digits else "") + tz
    if local.year < 1 or local.year > 9999 or len(local.strftime("%Y")) != 4:
        return
    want = _parse_rfc3339_ns(text)
    assert parse_timestamp_ns(text) == want
    if want is not None:
        assert want == seconds * 10**9 + int(frac.ljust(9, "0") or 0)


def test_time_zone_of_the_machine_does_not_matter() -> None:
    code = (
        "import orjson,sys; from audit_otlp.mapping.spans import row_span; from audit_otlp.mapping.ids import line_digest, MappingOptions; "
        "rows=[{'ts':'2026-04-15T14:23:03.250Z'},{'ts':'2026-03-08T07:30:00Z'},{'ts':'2026-11-01T06:30:00.000000001Z'},"
        "{'ts':'2026-07-01T12:00:00+05:30'}]; "
        "print([row_span(r,line_digest(b'x'),offset=0,observed_ns=1,options=MappingOptions())['startTimeUnixNano'] for r in rows])"
    )
    outputs = set()
    for tz in ("UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"):
        env = {**os.environ, "TZ": tz}
        outputs.add(
            subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60).stdout
        )
    assert len(outputs) == 1
    assert f"'{TS_NS}'" in outputs.pop()


# -- attributes -----------------------------------------------------------------------------


def test_interface_attributes_and_types() -> None:
    span = span_of(TOOL_ROW)
    a = attrs(span)
    assert a["agent.id"] == "s-42" and a["tool.name"] == "WebFetch" and a["network.dest_host"] == "example.com"
    assert a["policy.outcome"] == "allowed" and a["audit.event"] == "tool_use" and a["audit.severity"] == "info"
    assert a["audit.target"] == "https://example.com/" and a["audit.prev_hash"] == "abc="
    raw = {kv["key"]: kv["value"] for kv in span["attributes"]}
    assert raw["tool.duration_ms"] == {"intValue": "42"} and raw["tool.bytes_in"] == {"intValue": "120"}
    assert raw["tool.bytes_out"] == {"intValue": "5120"} and raw["audit.offset"] == {"intValue": "123"}
    assert "unknown_field" not in str(span) and "error.type" not in a
    assert len(raw) == len(span["attributes"])  # keys are unique


def test_missing_fields_are_omitted() -> None:
    a = attrs(span_of({"event": "session_start", "ts": "2026-04-15T14:23:00Z"}))
    assert set(a) == {"audit.event", "gen_ai.operation.name", "sentry.op", "openinference.span.kind", "audit.offset"}


def test_agent_id_prefers_agent_id_and_outcome_falls_back() -> None:
    a = attrs(span_of({**TOOL_ROW, "agent_id": "agent-7", "policy_outcome": None, "outcome": "denied"}))
    assert a["agent.id"] == "agent-7" and a["gen_ai.agent.id"] == "agent-7" and a["policy.outcome"] == "denied"


# -- GenAI conventions ----------------------------------------------------------------------


def test_tool_row_is_an_execute_tool_span() -> None:
    span = span_of(TOOL_ROW)
    a = attrs(span)
    assert span["name"] == "execute_tool WebFetch" and span["kind"] == 1
    assert a["gen_ai.operation.name"] == "execute_tool" and a["gen_ai.tool.name"] == "WebFetch"
    assert a["gen_ai.tool.call.id"] == "toolu_01" and a["gen_ai.conversation.id"] == "s-42"
    assert a["sentry.op"] == "gen_ai.execute_tool" and a["gen_ai.tool.type"] == "function"
    assert span["status"] == {"code": 1}
    assert "gen_ai.tool.call.id" not in attrs(span_of({k: v for k, v in TOOL_ROW.items() if k != "tool_use_id"}))
    assert attrs(span_of({**TOOL_ROW, "session_id": 42}))["gen_ai.conversation.id"] == "42"


def test_secret_detected_is_a_successful_guardrail_tool_span() -> None:
    row = {
        "event": "secret_detected",
        "ts": "2026-04-15T14:23:01Z",
        "file": "cfg.env",
        "pattern_id": "aws-access-key-id",
        "severity": "critical",
        "masked": "AKIA...MPLE",
    }
    span = span_of(row)
    a = attrs(span)
    assert span["name"] == "execute_tool guardrail.secret_detected"
    assert a["gen_ai.operation.name"] == "execute_tool" and a["gen_ai.tool.name"] == "guardrail.secret_detected"
    assert a["audit.severity"] == "critical" and span["status"] == {"code": 1} and "error.type" not in a
    assert "AKIA" not in orjson.dumps(span).decode() or a.get("masked") is None  # nothing added beyond the mapping


def test_action_blocked_is_an_error_with_a_low_cardinality_type() -> None:
    row = {"event": "action_blocked", "ts": "2026-04-15T14:23:02Z", "reason": "rm -rf /", "severity": "critical"}
    span = span_of(row)
    a = attrs(span)
    assert span["name"] == "execute_tool guardrail.action_blocked"
    assert span["status"]["code"] == 2 and a["error.type"] == "action_blocked"
    with_tool = span_of({**row, "tool": "Bash"})  # a guardrail's decision about a tool: still the guardrail's span
    assert with_tool["name"] == "execute_tool guardrail.action_blocked" and with_tool["status"]["code"] == 2
    assert attrs(with_tool)["error.type"] == "action_blocked" and attrs(with_tool)["tool.name"] == "Bash"


@pytest.mark.parametrize(
    "name, row, span_name, error_type, extra",
    [
        (
            "egress-shield's policy_blocked row",
            {
                "ts": "2026-05-14T10:00:03Z",
                "event": "policy_blocked",
                "shield": "egress-shield",
                "tool": "WebFetch",
                "host": "evil.example",
                "allowlist_size": 3,
            },
            "execute_tool guardrail.policy_blocked",
            "policy_blocked",
            {"network.dest_host": "evil.example", "tool.name": "WebFetch", "gen_ai.tool.type": "extension"},
        ),
        (
            "a tool call whose policy_outcome is blocked",
            {
                "event": "tool_use",
                "ts": "2026-05-14T10:00:03Z",
                "tool": "WebFetch",
                "dest_host": "x.test",
                "policy_outcome": "blocked",
            },
            "execute_tool guardrail.policy_blocked",
            "policy_blocked",
            {"network.dest_host": "x.test", "policy.outcome": "blocked"},
        ),
        (
            "a row whose outcome is blocked",
            {"event": "tool_use", "ts": "2026-05-14T10:00:03Z", "tool": "Bash", "outcome": "blocked"},
            "execute_tool guardrail.policy_blocked",
            "policy_blocked",
            {"tool.name": "Bash"},
        ),
        (
            "secret-scanner's secret_detected row",
            {
                "event": "secret_detected",
                "ts": "2026-05-14T10:00:04Z",
                "file": "cfg/.env",
                "line": 12,
                "pattern_id": "aws-access-key-id",
                "severity": "critical",
                "masked": "AKIA...MPLE",
                "tool": "Write",
                "is_test": False,
            },
            "execute_tool guardrail.secret_detected",
            None,
            {
                "audit.target": "cfg/.env",
                "audit.pattern_id": "aws-access-key-id",
                "audit.severity": "critical",
                "tool.name": "Write",
            },
        ),
    ],
)
def test_the_producers_guardrail_rows(
    name: str, row: dict[str, Any], span_name: str, error_type: str | None, extra: dict[str, Any]
) -> None:
    span = span_of(row)
    a = attrs(span)
    assert span["name"] == span_name and a["gen_ai.tool.name"] == span_name.split(" ")[1]
    assert span["status"]["code"] == (2 if error_type else 1) and a.get("error.type") == error_type
    assert {k: a.get(k) for k in extra} == extra


@pytest.mark.parametrize(
    "fields,error_type",
    [
        ({"error_type": "timeout"}, "timeout"),
        ({"error": "ENOENT"}, "ENOENT"),
        ({"error": "file not found: /home/user/secret/path.txt"}, "_OTHER"),
        ({"error": True}, "_OTHER"),
        ({"error": {"code": 5}}, "_OTHER"),
        ({"error_type": "timeout", "error": "took 31 s"}, "timeout"),
        ({"error": False}, None),
        ({"error": ""}, None),
        ({"error": None, "error_type": None}, None),
    ],
)
def test_error_rows(fields: dict[str, Any], error_type: str | None) -> None:
    span = span_of({**TOOL_ROW, **fields})
    if error_type is None:
        assert span["status"] == {"code": 1} and "error.type" not in attrs(span)
        return
    assert span["status"]["code"] == 2 and attrs(span)["error.type"] == error_type
    if isinstance(fields.get("error"), str):
        assert span["status"]["message"] == fields["error"]


def test_every_span_has_a_gen_ai_identity() -> None:
    digest = line_digest(b"x")
    verdict = verify_row(ChainState(last_hash="a"), {"prev_hash": "b"}, ChainHasher())
    spans = [
        span_of({}),
        span_of({"event": "session_start"}),
        span_of(TOOL_ROW),
        span_of({"event": "secret_detected"}),
        span_of({"event": "action_blocked"}),
        orjson.loads(encode_span(malformed_span(offset=0, length=1, digest=digest, reason="invalid_json", observed_ns=1))),
        orjson.loads(encode_span(chain_broken_span(verdict=verdict, offset=0, line_number=1, digest=digest, start_ns=1))),
    ]
    for span in spans:
        assert any(k.startswith("gen_ai.") for k in attrs(span)), span["name"]
        assert attrs(span)["gen_ai.operation.name"] in ("execute_tool", "invoke_workflow")
    assert spans[1]["name"] == "invoke_workflow session_start" and spans[0]["name"] == "invoke_workflow audit"
    valid_request(spans)


def test_chain_attributes() -> None:
    a = attrs(span_of({**TOOL_ROW, "prev_hash": "GENESIS"}, chain=True))
    assert a["audit.chain.verified"] is True and a["audit.chain.verdict"] == "ok" and len(a["audit.hash"]) == 44
    unchained = attrs(span_of({k: v for k, v in TOOL_ROW.items() if k != "prev_hash"}, chain=True))
    assert unchained["audit.chain.verified"] is False and unchained["audit.chain.verdict"] == "unchained"
    assert "audit.hash" in unchained
    assert "audit.chain.verified" not in attrs(span_of(TOOL_ROW))  # verification off


def test_resource_attributes_and_llmobs_switch() -> None:
    on = resource_attributes("hydra.audit-trail", {}, True)
    assert on == {"service.name": "hydra.audit-trail", "service.namespace": "enchanter", "dd_llmobs_enabled": "true"}
    assert resource_attributes("svc", {}, False)["dd_llmobs_enabled"] == "false"
    user = resource_attributes("svc", {"dd_llmobs_enabled": "false", "service.namespace": "ns", "service.name": "x"}, True)
    assert user == {"service.name": "svc", "service.namespace": "ns", "dd_llmobs_enabled": "false"}


# -- robustness ------------------------------------------------------------------------------

_json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False),
        st.text(st.characters(blacklist_categories=()), max_size=20),
    ),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)),
    max_leaves=6,
)
_FIELDS = [
    "event",
    "ts",
    "tool",
    "session_id",
    "agent_id",
    "agent_name",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "dest_host",
    "policy_outcome",
    "outcome",
    "error",
    "error_type",
    "target",
    "severity",
    "prev_hash",
    "trace_id",
    "tool_use_id",
    "tool_call_id",
    "call_id",
    "reason",
]
_rows = st.dictionaries(
    st.one_of(st.sampled_from(_FIELDS), st.text(max_size=8)),
    st.one_of(
        _json_values, st.sampled_from(["2026-04-15T14:23:00Z", "GENESIS", "action_blocked", "4bf92f3577b34da6a3ce929d0e0e4736"])
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rows, st.sampled_from(["prev_hash", "session"]))
def test_any_row_maps_to_a_valid_span(row: dict[str, Any], trace_id_from: str) -> None:
    span = span_of(row, MappingOptions(trace_id_from), chain=True)
    assert HEX32.fullmatch(span["traceId"]) and span["traceId"].strip("0")
    assert HEX16.fullmatch(span["spanId"]) and span["spanId"].strip("0")
    start, end = int(span["startTimeUnixNano"]), int(span["endTimeUnixNano"])
    assert 0 <= start <= end < 2**64
    has_error = any(row.get(k) not in (None, False, "") for k in ("error", "error_type"))
    assert span["status"]["code"] == (2 if row.get("event") == "action_blocked" or has_error else 1)
    assert ("error.type" in attrs(span)) == (span["status"]["code"] == 2)
    keys = [kv["key"] for kv in span["attributes"]]
    assert len(keys) == len(set(keys))
    valid_request([span])


def test_lone_surrogates_reach_the_wire_as_replacement_characters() -> None:
    line = b'{"event":"x\\udc00","tool":"a\\ud800","prev_hash":"GENESIS","\\udfff":1}'
    row, reason = parse_line(line)
    assert reason is None
    span = span_of(row, chain=True, line=line)
    assert span["name"] == "execute_tool a\ufffd" and attrs(span)["audit.event"] == "x\ufffd"
    valid_request([span])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_any_line_parses_or_is_refused(data: bytes) -> None:
    row, reason = parse_line(data)
    assert (row is None) != (reason is None)
    assert reason in (None, "invalid_utf8", "invalid_json", "not_an_object")


@pytest.mark.parametrize("count", [0, 1, 2, 3, 512])
def test_request_body_is_the_envelope_around_the_comma_joined_spans(count: int) -> None:
    envelope = make_envelope(resource_attributes("svc", {}, True))
    spans = [orjson.dumps({"spanId": f"{i:016x}"}) for i in range(count)]
    body = envelope.body(spans)
    assert body == envelope.head + b",".join(spans) + envelope.tail
    assert len(body) == envelope.size(sum(map(len, spans)), count)
    assert [s["spanId"] for s in orjson.loads(body)["resourceSpans"][0]["scopeSpans"][0]["spans"]] == [
        f"{i:016x}" for i in range(count)
    ]
