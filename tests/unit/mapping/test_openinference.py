"""What Arize Phoenix (OpenInference) reads from a row's span: the span kind it shows (TOOL,
GUARDRAIL or CHAIN, set explicitly because Phoenix calls invoke_workflow spans UNKNOWN) and the
tool call's arguments (the row's target) and result (its outcome)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from audit_otlp.mapping.envelope import encode_span
from audit_otlp.mapping.ids import MappingOptions, line_digest
from audit_otlp.mapping.spans import row_span
from tests.helpers.collector import attrs


def span_attributes(row: dict[str, Any]) -> dict[str, Any]:
    line = orjson.dumps(row)
    span = row_span(row, line_digest(line), offset=0, observed_ns=1, options=MappingOptions())
    return attrs(orjson.loads(encode_span(span)))


# (row, span kind, gen_ai.tool.call.arguments, gen_ai.tool.call.result); None: absent
CASES: dict[str, tuple[dict[str, Any], str, Any, Any]] = {
    "a_tool_call": ({"event": "tool_use", "tool": "Write", "target": "src/app.py", "policy_outcome": "allowed"}, "TOOL", "src/app.py", "allowed"),
    "a_tool_call_without_target_or_outcome": ({"event": "tool_use", "tool": "Read"}, "TOOL", None, None),
    "the_outcome_field_when_policy_outcome_is_absent": ({"tool": "Bash", "target": "ls", "outcome": "allowed"}, "TOOL", "ls", "allowed"),
    "a_structured_target_as_json": ({"tool": "Edit", "target": {"path": "a.py", "line": 3}}, "TOOL", '{"path":"a.py","line":3}', None),
    "a_secret_finding_names_the_file": ({"event": "secret_detected", "file": "cfg.env", "severity": "critical"}, "GUARDRAIL", "cfg.env", None),
    "a_secret_finding_about_a_tool": ({"event": "secret_detected", "tool": "Write", "target": "x.env"}, "GUARDRAIL", "x.env", None),
    "a_blocked_action": ({"event": "action_blocked", "reason": "rm -rf /"}, "GUARDRAIL", None, None),
    "a_policy_block": ({"event": "policy_blocked", "host": "evil.example"}, "GUARDRAIL", None, None),
    "a_tool_call_blocked_by_policy": ({"tool": "Bash", "target": "curl x", "policy_outcome": "blocked"}, "GUARDRAIL", "curl x", "blocked"),
    "a_policy_decision": ({"event": "policy_decision", "outcome": "allowed"}, "GUARDRAIL", None, "allowed"),
    "a_session_event": ({"event": "session_start", "target": "ignored for a chain step"}, "CHAIN", None, None),
    "a_row_without_event": ({}, "CHAIN", None, None),
    "an_event_that_is_not_a_string": ({"event": ["secret_detected"]}, "CHAIN", None, None),
    "an_empty_tool_name": ({"event": "tool_use", "tool": ""}, "CHAIN", None, None),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_span_kind_and_tool_call(name: str) -> None:
    row, kind, arguments, result = CASES[name]
    a = span_attributes(row)
    assert a["openinference.span.kind"] == kind
    assert a.get("gen_ai.tool.call.arguments") == arguments
    assert a.get("gen_ai.tool.call.result") == result


def test_the_mapping_never_names_the_project() -> None:
    # Phoenix's project is a resource attribute the operator sets (OTEL_RESOURCE_ATTRIBUTES).
    assert "openinference.project.name" not in span_attributes({"event": "tool_use", "tool": "Write"})
