"""Row -> OTLP/JSON span dict, as pure functions: the attributes of the README's "Spans" table, the
GenAI identity Datadog and Sentry read, status, times; plus the evidence spans for malformed
lines and chain breaks. `envelope.encode_span` turns a dict into the bytes a request carries."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import orjson

from audit_otlp.mapping.chain import ChainVerdict
from audit_otlp.mapping.ids import MappingOptions, nonzero_hex, span_id_for, trace_id_for
from audit_otlp.mapping.parse import UINT64_MAX, parse_timestamp_ns

SPAN_KIND_INTERNAL = 1
STATUS_OK = 1
STATUS_ERROR = 2
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Events that record a guardrail decision rather than a tool call.
GUARDRAIL_EVENTS = frozenset({"secret_detected", "action_blocked", "policy_violation", "policy_decision"})


# ---------------------------------------------------------------------------------------------
# Values and ids.


def any_value(value: Any) -> dict[str, Any]:
    """An OTLP AnyValue for a JSON value; 64-bit integers as decimal strings."""
    t = type(value)
    if t is str:
        return {"stringValue": value}
    if t is bool:
        return {"boolValue": value}
    if t is int:
        if INT64_MIN <= value <= INT64_MAX:
            return {"intValue": str(value)}
        return {"stringValue": str(value)}
    if t is float:
        if value != value or value in (math.inf, -math.inf):
            return {"stringValue": str(value)}
        return {"doubleValue": value}
    if value is None:
        return {"stringValue": "null"}
    # Objects and arrays: a JSON string (Sentry drops kvlists and stringifies arrays).
    return {"stringValue": _text(value)}


def kv(key: str, value: Any) -> dict[str, Any]:
    # Most values are strings: build those without the call to any_value.
    if type(value) is str:
        return {"key": key, "value": {"stringValue": value}}
    return {"key": key, "value": any_value(value)}


# ---------------------------------------------------------------------------------------------
# Spans.

# (row field, attribute) for the attributes of the README's "Spans" table copied as they are.
_DIRECT_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("tool", "tool.name"),
    ("duration_ms", "tool.duration_ms"),
    ("bytes_in", "tool.bytes_in"),
    ("bytes_out", "tool.bytes_out"),
    ("dest_host", "network.dest_host"),
    ("event", "audit.event"),
    ("severity", "audit.severity"),
    ("target", "audit.target"),
    ("prev_hash", "audit.prev_hash"),
)
_TOOL_CALL_ID_FIELDS = ("tool_call_id", "tool_use_id", "call_id")
_MAX_ERROR_TYPE = 64  # longer `error` text is a message, not a type: error.type becomes _OTHER
_MAX_STATUS_MESSAGE = 256

# Pre-encoded attributes every span of a kind carries (shared, never mutated).
_OP_EXECUTE_TOOL = kv("gen_ai.operation.name", "execute_tool")
_SENTRY_OP_TOOL = kv("sentry.op", "gen_ai.execute_tool")
_TOOL_TYPE_FUNCTION = kv("gen_ai.tool.type", "function")
_TOOL_TYPE_EXTENSION = kv("gen_ai.tool.type", "extension")
_OP_WORKFLOW = kv("gen_ai.operation.name", "invoke_workflow")
_SENTRY_OP_WORKFLOW = kv("sentry.op", "gen_ai.invoke_workflow")
_VERIFIED_TRUE = kv("audit.chain.verified", True)
_VERIFIED_FALSE = kv("audit.chain.verified", False)
_VERDICT_GAP = kv("audit.chain.verdict", "gap")  # the rows before it vanished unseen
_RESUME_GAP = kv("audit.resume_gap", True)
_TS_INVALID = kv("audit.ts_invalid", True)
_STATUS_OK = {"code": STATUS_OK}


def _text(value: Any) -> str:
    """A field as text for an identifier attribute: strings as they are, anything else as JSON."""
    if type(value) is str:
        return value
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:  # integers beyond 64 bits, lone surrogates
        return json.dumps(value)


def _error_type(error: Any) -> str:
    """A low-cardinality error.type: a short token is kept, free text becomes `_OTHER`."""
    if type(error) is str and 0 < len(error) <= _MAX_ERROR_TYPE and not any(c.isspace() for c in error):
        return error
    return "_OTHER"


def row_span(
    row: Mapping[str, Any],
    digest: bytes,
    *,
    offset: int,
    observed_ns: int,
    options: MappingOptions,
    chain: ChainVerdict | None = None,
    gap: bool = False,
) -> dict[str, Any]:
    """The span for one audit row (README, "Spans"); `gap`: the first row after a resume gap."""
    attributes: list[dict[str, Any]] = []
    add = attributes.append
    get = row.get

    event = get("event")
    event_name = event if type(event) is str and event else None
    tool = get("tool")
    tool_name = tool if type(tool) is str and tool else None

    session = get("session_id")
    agent_id = get("agent_id")
    agent = agent_id if agent_id is not None else session
    if agent is not None:
        add(kv("agent.id", agent))
    for source, attribute in _DIRECT_ATTRIBUTES:
        value = get(source)
        if value is not None:  # strings inline: most values are, and a call per attribute counts
            add({"key": attribute, "value": {"stringValue": value} if type(value) is str else any_value(value)})
    outcome = get("policy_outcome")
    if outcome is None:
        outcome = get("outcome")
    if outcome is not None:
        add(kv("policy.outcome", outcome))

    # GenAI identity: every span gets one, because Datadog LLM Observability drops spans
    # without a gen_ai.* attribute. A row naming a tool is an execute_tool span of that tool
    # (a blocked call included: ERROR below); a guardrail event without a tool is an
    # execute_tool span of the guardrail ("guardrail.secret_detected"); anything else is a
    # workflow step. Sentry reads the op only from sentry.op.
    if tool_name is not None:
        genai_tool: str | None = tool_name
    elif event_name in GUARDRAIL_EVENTS:
        genai_tool = f"guardrail.{event_name}"
    else:
        genai_tool = None
    if genai_tool is not None:
        name = f"execute_tool {genai_tool}"
        add(_OP_EXECUTE_TOOL)
        add({"key": "gen_ai.tool.name", "value": {"stringValue": genai_tool}})
        add(_TOOL_TYPE_FUNCTION if tool_name is not None else _TOOL_TYPE_EXTENSION)
        add(_SENTRY_OP_TOOL)
        for field in _TOOL_CALL_ID_FIELDS:
            call_id = get(field)
            if call_id is not None:
                break
        if call_id is not None:
            add({"key": "gen_ai.tool.call.id", "value": {"stringValue": _text(call_id)}})
    else:
        name = f"invoke_workflow {event_name}" if event_name else "invoke_workflow audit"
        add(_OP_WORKFLOW)
        add(_SENTRY_OP_WORKFLOW)
    if session is not None:
        add({"key": "gen_ai.conversation.id", "value": {"stringValue": _text(session)}})
    if agent_id is not None:
        add({"key": "gen_ai.agent.id", "value": {"stringValue": _text(agent_id)}})
    agent_name = get("agent_name")
    if agent_name is not None:
        add({"key": "gen_ai.agent.name", "value": {"stringValue": _text(agent_name)}})

    # Status: ERROR with a low-cardinality error.type for error rows and blocked actions,
    # OK otherwise (README, "Spans"); the free-text error, when there is one, is the message.
    error_type = get("error_type")
    error = get("error")
    if error is False or error == "":  # "error": false / "" says there was none
        error = None
    if error_type is False or error_type == "":
        error_type = None
    if error_type is not None or error is not None:
        add(kv("error.type", _error_type(error_type if error_type is not None else error)))
        message = error if type(error) is str and error else "error"
        status: dict[str, Any] = {"code": STATUS_ERROR, "message": message[:_MAX_STATUS_MESSAGE]}
    elif event_name == "action_blocked":
        add(kv("error.type", "action_blocked"))
        reason = get("reason")
        message = reason if type(reason) is str and reason else "action blocked"
        status = {"code": STATUS_ERROR, "message": message[:_MAX_STATUS_MESSAGE]}
    else:
        status = _STATUS_OK

    if chain is not None:
        if chain.verified is not None:
            add(_VERIFIED_TRUE if chain.verified else _VERIFIED_FALSE)
        add({"key": "audit.hash", "value": {"stringValue": chain.row_hash}})
        if chain.restart:
            add(kv("audit.chain.restart", True))
        if chain.anchor:
            add(kv("audit.chain.anchor", True))  # first row seen: its prev_hash is unchecked
    if gap:
        add(_VERDICT_GAP)
        add(_RESUME_GAP)
    add({"key": "audit.offset", "value": {"intValue": str(offset)}})

    start = parse_timestamp_ns(get("ts"))
    if start is None:
        start = observed_ns
        add(_TS_INVALID)
    end = start
    duration = get("duration_ms")
    if type(duration) is int or type(duration) is float:
        if 0 < duration < 10**12:  # NaN and negative durations fail this too
            end = min(start + int(duration * 1_000_000), UINT64_MAX)

    return {
        "traceId": trace_id_for(row, digest, options),
        "spanId": span_id_for(digest),
        "name": name,
        "kind": SPAN_KIND_INTERNAL,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": attributes,
        "status": status,
    }


def malformed_span(*, offset: int, length: int, digest: bytes, reason: str, observed_ns: int) -> dict[str, Any]:
    """An ERROR span for a line that is not a JSON object: where it is, never what it says."""
    return {
        "traceId": nonzero_hex(digest[8:24]),
        "spanId": span_id_for(digest),
        "name": "audit.malformed_line",
        "kind": SPAN_KIND_INTERNAL,
        "startTimeUnixNano": str(observed_ns),
        "endTimeUnixNano": str(observed_ns),
        "attributes": [
            kv("audit.event", "audit.malformed_line"),
            _OP_EXECUTE_TOOL,
            kv("gen_ai.tool.name", "guardrail.malformed_line"),
            _TOOL_TYPE_EXTENSION,
            _SENTRY_OP_TOOL,
            kv("error.type", reason),
            kv("audit.offset", offset),
            kv("audit.length", length),
            kv("audit.line_sha256", digest.hex()),
        ],
        "status": {"code": STATUS_ERROR, "message": reason},
    }


def chain_broken_span(*, verdict: ChainVerdict, offset: int, line_number: int, digest: bytes, start_ns: int) -> dict[str, Any]:
    """The evidence span for a row whose prev_hash does not match the row before it (or that
    restarts the chain with GENESIS in mid-stream). Its ids derive from the row's line, so a
    re-delivery after a crash repeats the same span."""
    marker = hashlib.sha256(b"chain_broken:" + digest).digest()
    kind = "chain_restart" if verdict.restart else "chain_broken"
    attributes = [
        kv("audit.event", "audit.chain_broken"),
        _OP_EXECUTE_TOOL,
        kv("gen_ai.tool.name", "guardrail.chain_integrity"),
        _TOOL_TYPE_EXTENSION,
        _SENTRY_OP_TOOL,
        kv("error.type", kind),
        kv("audit.offset", offset),
        kv("audit.line_number", line_number),
        kv("audit.chain.expected", verdict.expected or ""),
        kv("audit.chain.found", verdict.found or ""),
        kv("audit.hash", verdict.row_hash),
    ]
    return {
        "traceId": nonzero_hex(marker[:16]),
        "spanId": nonzero_hex(marker[16:24]),
        "name": "audit.chain_broken",
        "kind": SPAN_KIND_INTERNAL,
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(start_ns),
        "attributes": attributes,
        "status": {"code": STATUS_ERROR, "message": "chain restarts with GENESIS" if verdict.restart else "prev_hash mismatch"},
    }
