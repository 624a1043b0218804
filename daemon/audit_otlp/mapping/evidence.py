"""Evidence spans: a line that is not a JSON object (where it is, never what it says) and a
chain break (which hash was expected, which was found); plus the chain attributes every span of
a verified chain carries. Pure, like spans.py."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from audit_otlp.mapping.chain import OK, VERDICTS, ChainVerdict
from audit_otlp.mapping.ids import nonzero_hex, span_id_for

SPAN_KIND_INTERNAL = 1
STATUS_ERROR = 2


def kv(key: str, value: Any) -> dict[str, Any]:
    if type(value) is str:
        return {"key": key, "value": {"stringValue": value}}
    if type(value) is bool:
        return {"key": key, "value": {"boolValue": value}}
    return {"key": key, "value": {"intValue": str(value)}}


_VERIFIED_TRUE = kv("audit.chain.verified", True)
_VERIFIED_FALSE = kv("audit.chain.verified", False)
_VERDICTS = {v: kv("audit.chain.verdict", v) for v in VERDICTS}
_OP_EXECUTE_TOOL = kv("gen_ai.operation.name", "execute_tool")
_SENTRY_OP_TOOL = kv("sentry.op", "gen_ai.execute_tool")
_TOOL_TYPE_EXTENSION = kv("gen_ai.tool.type", "extension")


def add_chain_attributes(add: Callable[[dict[str, Any]], None], chain: ChainVerdict) -> None:
    """The chain attributes every span of a verified chain carries (interface.md, "Spans")."""
    add(_VERIFIED_TRUE if chain.verdict == OK else _VERIFIED_FALSE)
    add(_VERDICTS[chain.verdict])
    add({"key": "audit.hash", "value": {"stringValue": chain.row_hash}})
    if chain.anchor:
        add(kv("audit.chain.anchor", True))  # first line seen: its prev_hash is unchecked


def malformed_span(
    *,
    offset: int,
    length: int,
    digest: bytes,
    reason: str,
    observed_ns: int,
    chain: ChainVerdict | None = None,
    occurrence: int = 0,
) -> dict[str, Any]:
    """An ERROR span for a line that is not a JSON object: where it is, never what it says
    (its chain link, as the producer hashes it, when the chain is verified)."""
    attributes = [
        kv("audit.event", "audit.malformed_line"),
        _OP_EXECUTE_TOOL,
        kv("gen_ai.tool.name", "guardrail.malformed_line"),
        _TOOL_TYPE_EXTENSION,
        _SENTRY_OP_TOOL,
        kv("error.type", reason),
        kv("audit.offset", offset),
        kv("audit.length", length),
        kv("audit.line_sha256", digest.hex()),
    ]
    if chain is not None:
        add_chain_attributes(attributes.append, chain)
    return {
        "traceId": nonzero_hex(digest[8:24]),
        "spanId": span_id_for(digest, occurrence),
        "name": "audit.malformed_line",
        "kind": SPAN_KIND_INTERNAL,
        "startTimeUnixNano": str(observed_ns),
        "endTimeUnixNano": str(observed_ns),
        "attributes": attributes,
        "status": {"code": STATUS_ERROR, "message": reason},
    }


def chain_broken_span(
    *, verdict: ChainVerdict, offset: int, line_number: int, digest: bytes, start_ns: int, occurrence: int = 0
) -> dict[str, Any]:
    """The evidence span for a row whose prev_hash names no line we know (verdict `break`). Its
    ids derive from the row's line (and its identical predecessors), so a re-delivery after a
    crash repeats the same span."""
    marker = hashlib.sha256(b"chain_broken:" + (b"%d:" % occurrence if occurrence else b"") + digest).digest()
    kind = "chain_broken"
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
        "status": {"code": STATUS_ERROR, "message": "prev_hash names no earlier line"},
    }
