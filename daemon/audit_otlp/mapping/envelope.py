"""The request around the spans: resource and scope encoded once, and the spans of a batch joined
inside it with one copy, so batches can be split and re-joined for 413/400 handling without
re-mapping anything."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from audit_otlp import __version__
from audit_otlp.mapping.spans import kv

SCOPE_NAME = "audit-otlp"
SERVICE_NAMESPACE = "enchanter"
_SURROGATES = re.compile("[\ud800-\udfff]")


def encode_span(span: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(span)
    except TypeError:
        # A lone surrogate (valid JSON escape, not valid UTF-8) reached a string: send U+FFFD,
        # as jq shows it.
        return orjson.dumps(_scrub(span))


def _scrub(value: Any) -> Any:
    if type(value) is str:
        return _SURROGATES.sub("\ufffd", value)
    if type(value) is dict:
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if type(value) is list:
        return [_scrub(v) for v in value]
    return value


@dataclass(frozen=True)
class Envelope:
    """The bytes around the spans of every request: resource and scope, encoded once."""

    head: bytes
    tail: bytes = b"]}]}]}"

    def body(self, spans: Sequence[bytes]) -> bytes:
        # One copy of the spans: the head rides on the first span and the tail on the last.
        # (head + join + tail copied a ~1 MB body three times, a third of a request's CPU.)
        if len(spans) < 2:
            return self.head + (spans[0] if spans else b"") + self.tail
        return b",".join((self.head + spans[0], *spans[1:-1], spans[-1] + self.tail))

    def size(self, spans_bytes: int, count: int) -> int:
        return len(self.head) + spans_bytes + max(count - 1, 0) + len(self.tail)


def resource_attributes(service_name: str, extra: Mapping[str, str], dd_llmobs_enabled: bool) -> dict[str, str]:
    attrs = dict(extra)
    attrs["service.name"] = service_name  # OTEL_SERVICE_NAME wins over OTEL_RESOURCE_ATTRIBUTES
    attrs.setdefault("service.namespace", SERVICE_NAMESPACE)
    # Datadog LLM Observability: documented as automatic with `false` to opt out, reported as
    # opt-in with `true` since late 2026; sending the switch explicitly is right under both.
    attrs.setdefault("dd_llmobs_enabled", "true" if dd_llmobs_enabled else "false")
    return attrs


def make_envelope(attributes: Mapping[str, str]) -> Envelope:
    resource = {"attributes": [kv(k, v) for k, v in attributes.items()]}
    scope = {"name": SCOPE_NAME, "version": __version__}
    head = (
        b'{"resourceSpans":[{"resource":'
        + orjson.dumps(resource)
        + b',"scopeSpans":[{"scope":'
        + orjson.dumps(scope)
        + b',"spans":['
    )
    return Envelope(head)
