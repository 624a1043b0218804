"""The attributes Arize Phoenix (OpenInference) reads, added to a row's span.

Phoenix infers a span kind only from `gen_ai.operation.name=execute_tool` (TOOL) and shows
`invoke_workflow` spans as UNKNOWN, so the kind is set explicitly: TOOL for a tool call,
GUARDRAIL for a blocked action or a secret finding (any guardrail decision), CHAIN for every
other event. A tool or guardrail span carries the row's target as `gen_ai.tool.call.arguments`
and its outcome as `gen_ai.tool.call.result` (GenAI conventions, Opt-In; Phoenix shows them as
the tool's parameters and the output, Datadog as input and output). The project a span lands in
is a resource attribute, `openinference.project.name` (OTEL_RESOURCE_ATTRIBUTES), not set here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# Guardrail decisions: what the producer's guardrails write, blocked or not.
GUARDRAIL_EVENTS = frozenset({"secret_detected", "action_blocked", "policy_blocked", "policy_violation", "policy_decision"})

_TOOL = {"key": "openinference.span.kind", "value": {"stringValue": "TOOL"}}
_GUARDRAIL = {"key": "openinference.span.kind", "value": {"stringValue": "GUARDRAIL"}}
_CHAIN = {"key": "openinference.span.kind", "value": {"stringValue": "CHAIN"}}


def add_openinference(
    add: Callable[[dict[str, Any]], None], row: Mapping[str, Any], outcome: Any, as_text: Callable[[Any], str]
) -> None:
    """Add the span kind, and for tool and guardrail spans the call's arguments and result
    (`as_text`: the mapping's field-to-text rule, strings as they are and anything else as JSON)."""
    event, tool = row.get("event"), row.get("tool")
    if (type(event) is str and event in GUARDRAIL_EVENTS) or outcome == "blocked":
        add(_GUARDRAIL)
    elif type(tool) is str and tool:
        add(_TOOL)
    else:
        add(_CHAIN)
        return
    target = row.get("target")
    if target is None:
        target = row.get("file")  # a secret finding names the file
    if target is not None:
        add({"key": "gen_ai.tool.call.arguments", "value": {"stringValue": as_text(target)}})
    if outcome is not None:
        add({"key": "gen_ai.tool.call.result", "value": {"stringValue": as_text(outcome)}})
