"""Row -> OTLP/JSON span dict, as pure functions: the attributes of the README's "Spans" table, the
GenAI identity Datadog and Sentry read, status, times; plus the evidence spans for malformed
lines and chain breaks. `envelope.encode_span` turns a dict into the bytes a request carries."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import orjson

from audit_otlp.mapping.chain import ChainVerdict
from audit_otlp.mapping.evidence import add_chain_attributes
from audit_otlp.mapping.ids import MappingOptions, span_id_for, trace_id_for
from audit_otlp.mapping.openinference import add_openinference
from audit_otlp.mapping.parse import UINT64_MAX, parse_timestamp_ns

SPAN_KIND_INTERNAL = 1
STATUS_OK = 1
STATUS_ERROR = 2
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Events that record a guardrail decision rather than a tool call (even when they name the tool
# the decision was about, as secret-scanner's and egress-shield's rows do).
GUARDRAIL_EVENTS = frozenset({"secret_detected", "action_blocked", "policy_blocked", "policy_violation", "policy_decision"})
BLOCKED_EVENTS = frozenset({"action_blocked", "policy_blocked"})


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
    occurrence: int = 0,
    gap: bool = False,
) -> dict[str, Any]:
    """The span for one audit row (README, "Spans"); `occurrence` counts the identical lines
    just before it (see ids.IdentityWindow); `gap`: the first row after a resume gap."""
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
    if get("target") is None and get("file") is not None:  # secret-scanner names the file
        add(kv("audit.target", get("file")))
    if get("dest_host") is None and get("host") is not None:  # egress-shield names the host
        add(kv("network.dest_host", get("host")))
    if get("pattern_id") is not None:
        add(kv("audit.pattern_id", get("pattern_id")))
    outcome = get("policy_outcome")
    if outcome is None:
        outcome = get("outcome")
    if outcome is not None:
        add(kv("policy.outcome", outcome))
    blocked = event_name in BLOCKED_EVENTS or outcome == "blocked"

    # GenAI identity: every span gets one, because Datadog LLM Observability drops spans
    # without a gen_ai.* attribute. A guardrail decision (a guardrail event, or any blocked
    # row) is an execute_tool span of the guardrail ("guardrail.secret_detected"), the tool it
    # was about staying in tool.name; another row naming a tool is an execute_tool span of that
    # tool; anything else is a workflow step. Sentry reads the op only from sentry.op.
    if event_name in GUARDRAIL_EVENTS:
        genai_tool: str | None = f"guardrail.{event_name}"
    elif blocked:
        genai_tool = "guardrail.policy_blocked"
    else:
        genai_tool = tool_name
    guardrail = genai_tool is not None and genai_tool is not tool_name
    if genai_tool is not None:
        name = f"execute_tool {genai_tool}"
        add(_OP_EXECUTE_TOOL)
        add({"key": "gen_ai.tool.name", "value": {"stringValue": genai_tool}})
        add(_TOOL_TYPE_EXTENSION if guardrail else _TOOL_TYPE_FUNCTION)
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
    add_openinference(add, row, outcome, _text)  # Phoenix: span kind, tool arguments and result

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
    elif blocked:
        add(kv("error.type", event_name if event_name in BLOCKED_EVENTS else "policy_blocked"))
        reason = _first_text(row, "reason", "description", "host", "dest_host")
        message = reason or ("action blocked" if event_name == "action_blocked" else "blocked by policy")
        status = {"code": STATUS_ERROR, "message": message[:_MAX_STATUS_MESSAGE]}
    else:
        status = _STATUS_OK

    if chain is not None:
        add_chain_attributes(add, chain)
    if gap:
        if chain is None:  # no chain check: the verdict still says why this row is unverified
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
        "traceId": trace_id_for(row, digest, options, chain.row_hash if chain is not None else None),
        "spanId": span_id_for(digest, occurrence),
        "name": name,
        "kind": SPAN_KIND_INTERNAL,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": attributes,
        "status": status,
    }


def _first_text(row: Mapping[str, Any], *fields: str) -> str | None:
    for name in fields:
        value = row.get(name)
        if type(value) is str and value:
            return value
    return None
