"""OTLP/JSON spans -> OTLP protobuf bytes (ExportTraceServiceRequest), encoded by hand.

Phoenix takes only `application/x-protobuf`; neither the OpenTelemetry SDK nor a protobuf runtime
may be a runtime dependency, and the subset we emit is small. As on the JSON path, a span dict is
encoded once, into a framed `ScopeSpans.spans` record, and `ProtobufEnvelope` puts any run of
records inside the resource and scope: 413 splits and 400 bisections re-join records, never
re-encode. Strict: a field outside the subset raises ProtobufError, never vanishes. Fields go in
number order without proto3 defaults, so the bytes equal opentelemetry-proto's for the same JSON;
lone surrogates become U+FFFD, as on the JSON path. Answers are read in `answers`.
"""

from __future__ import annotations

import base64
import functools
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

CONTENT_TYPE = "application/x-protobuf"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64_MAX, _INT32_MAX = 2**64 - 1, 2**31 - 1
_SURROGATES = re.compile("[\ud800-\udfff]")
_DECIMAL = re.compile(r"-?[0-9]+", re.ASCII)
_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))
_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_SPAN_KEYS = frozenset(("traceId", "spanId", "name", "kind", "startTimeUnixNano", "endTimeUnixNano", "attributes", "status"))


class ProtobufError(ValueError):
    """A value outside the encoded subset, or a body that is not valid protobuf."""


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if value < 0:  # int64: two's complement, always ten bytes
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + _varint(len(payload)) + payload


def _utf8(text: Any) -> bytes:
    if type(text) is not str:
        raise ProtobufError(f"expected a string, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: U+FFFD, as the JSON path sends them
        return _SURROGATES.sub("\ufffd", text).encode("utf-8")


def _integer(value: Any, lo: int, hi: int, what: str) -> int:
    """A 64-bit integer given as a JSON number or a decimal string (OTLP/JSON writes both)."""
    if type(value) is str and _DECIMAL.fullmatch(value):
        value = int(value)
    if type(value) is int and lo <= value <= hi:
        return value
    raise ProtobufError(f"{what}: not an integer in [{lo}, {hi}]: {value!r}")


def _only(container: Mapping[str, Any], keys: Iterable[str], what: str) -> None:
    unknown = set(container).difference(keys)
    if unknown:
        raise ProtobufError(f"{what} fields not encoded: {sorted(unknown)}")


def _hex_id(value: Any, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ProtobufError(f"{what}: not hex: {value!r}") from None


# Messages: field numbers and wire types from opentelemetry-proto (common, resource, trace).
def _any_value(value: Mapping[str, Any]) -> bytes:
    """AnyValue: a oneof, so even a default value (empty string, false, 0) is written."""
    if not value:
        return b""
    if len(value) != 1:
        raise ProtobufError(f"AnyValue with several values: {sorted(value)}")
    ((kind, item),) = value.items()
    if kind == "stringValue":
        return _field(b"\x0a", _utf8(item))
    if kind == "boolValue":
        if type(item) is not bool:
            raise ProtobufError(f"boolValue: not a bool: {item!r}")
        return b"\x10\x01" if item else b"\x10\x00"
    if kind == "intValue":
        return b"\x18" + _varint(_integer(item, _INT64_MIN, _INT64_MAX, "intValue"))
    if kind == "doubleValue":
        if type(item) is bool or type(item) not in (int, float, str):
            raise ProtobufError(f"doubleValue: not a number: {item!r}")
        try:  # float() also reads "NaN" and "Infinity", as proto3 JSON writes them
            return b"\x21" + _DOUBLE.pack(float(item))
        except ValueError:
            raise ProtobufError(f"doubleValue: not a number: {item!r}") from None
    if kind == "arrayValue":
        values = item.get("values", ())
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in values))
    if kind == "kvlistValue":
        return _field(b"\x32", _attributes(b"\x0a", item.get("values", ())))
    if kind == "bytesValue":
        try:
            return _field(b"\x3a", base64.b64decode(item, validate=True))
        except (TypeError, ValueError):
            raise ProtobufError(f"bytesValue: not base64: {item!r}") from None
    raise ProtobufError(f"AnyValue kind {kind!r} is not encoded")


@functools.lru_cache(maxsize=1024)
def _key_field(key: str) -> bytes:
    """KeyValue.key, framed: attribute keys are few and repeat in every span."""
    data = _utf8(key)
    return b"\x0a" + _varint(len(data)) + data if data else b""


def _encode_string_attribute(tag: bytes, key: str, text: str) -> bytes:
    """A framed KeyValue with a string value: most attributes, and most of those repeat from
    span to span (operation, tool, event, session), so short ones come from a bounded cache."""
    data = _utf8(text)
    inner = b"\x0a" + _varint(len(data)) + data
    payload = _key_field(key) + b"\x12" + _varint(len(inner)) + inner
    return tag + _varint(len(payload)) + payload


_short_string_attribute = functools.lru_cache(maxsize=4096)(_encode_string_attribute)  # at most ~2 MB


def _key_value(kv: Mapping[str, Any]) -> bytes:
    key, value = kv.get("key", ""), kv.get("value")
    if type(key) is not str:
        raise ProtobufError(f"attribute key: not a string: {key!r}")
    return _key_field(key) if value is None else _key_field(key) + _field(b"\x12", _any_value(value))


def _attributes(tag: bytes, attributes: Sequence[Mapping[str, Any]]) -> bytes:
    """A repeated KeyValue field (its tag differs per message)."""
    out = []
    for kv in attributes:
        value = kv.get("value")
        text = value.get("stringValue") if type(value) is dict and len(value) == 1 else None
        key = kv.get("key", "")
        if type(text) is str and type(key) is str:
            encode = _short_string_attribute if len(text) <= 128 else _encode_string_attribute
            out.append(encode(tag, key, text))
        else:
            data = _key_value(kv)
            out.append(tag + _varint(len(data)) + data)
    return b"".join(out)


def _span(span: Mapping[str, Any]) -> bytes:
    _only(span, _SPAN_KEYS, "span")
    parts = []
    for tag, key in ((b"\x0a", "traceId"), (b"\x12", "spanId")):
        span_id = _hex_id(span.get(key, ""), key)
        if span_id:
            parts.append(_field(tag, span_id))
    name = _utf8(span.get("name", ""))
    if name:
        parts.append(_field(b"\x2a", name))
    kind = _integer(span.get("kind", 0), 0, _INT32_MAX, "kind")
    if kind:
        parts.append(b"\x30" + _varint(kind))
    for tag, key in ((b"\x39", "startTimeUnixNano"), (b"\x41", "endTimeUnixNano")):
        time = _integer(span.get(key, 0), 0, _UINT64_MAX, key)
        if time:
            parts.append(tag + _FIXED64.pack(time))
    parts.append(_attributes(b"\x4a", span.get("attributes", ())))
    status = span.get("status")
    if status is not None:
        parts.append(_field(b"\x7a", _status(status)))
    return b"".join(parts)


def _status(status: Mapping[str, Any]) -> bytes:
    _only(status, {"code", "message"}, "status")
    message = _utf8(status.get("message", ""))
    code = _integer(status.get("code", 0), 0, _INT32_MAX, "status.code")
    out = _field(b"\x12", message) if message else b""
    return out + (b"\x18" + _varint(code) if code else b"")


def _resource(resource: Mapping[str, Any]) -> bytes:
    _only(resource, {"attributes"}, "resource")
    return _attributes(b"\x0a", resource.get("attributes", ()))


def _scope(scope: Mapping[str, Any]) -> bytes:
    _only(scope, {"name", "version", "attributes"}, "scope")
    name, version = _utf8(scope.get("name", "")), _utf8(scope.get("version", ""))
    out = _field(b"\x0a", name) if name else b""
    out += _field(b"\x12", version) if version else b""
    return out + _attributes(b"\x1a", scope.get("attributes", ()))


def encode_span(span: Mapping[str, Any]) -> bytes:
    """One OTLP/JSON span -> its `ScopeSpans.spans` record (tag + length + Span), to join."""
    try:
        return _field(b"\x12", _span(span))
    except (
        AttributeError,
        TypeError,
    ) as exc:  # a list where a dict belongs, and the like
        raise ProtobufError(f"not an OTLP/JSON span: {exc}") from None


def encode_span_json(data: bytes) -> bytes:
    """The same from the span's OTLP/JSON bytes (as `mapping.encode_span` wrote them)."""
    return encode_span(orjson.loads(data))


def _json(doc: bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(doc, bytes | bytearray | memoryview):
        try:
            doc = orjson.loads(doc)
        except orjson.JSONDecodeError as exc:
            raise ProtobufError(f"not JSON: {exc}") from None
    if not isinstance(doc, Mapping):
        raise ProtobufError("an ExportTraceServiceRequest is a JSON object")
    _only(doc, {"resourceSpans"}, "request")
    return doc


def _resource_field(resource_spans: Mapping[str, Any]) -> bytes:
    _only(resource_spans, {"resource", "scopeSpans"}, "resourceSpans")
    resource = resource_spans.get("resource")
    return b"" if resource is None else _field(b"\x0a", _resource(resource))


def _scope_field(scope_spans: Mapping[str, Any]) -> bytes:
    _only(scope_spans, {"scope", "spans"}, "scopeSpans")
    scope = scope_spans.get("scope")
    return b"" if scope is None else _field(b"\x0a", _scope(scope))


def encode_request(doc: bytes | Mapping[str, Any]) -> bytes:
    """A whole OTLP/JSON ExportTraceServiceRequest (bytes or parsed) -> protobuf bytes."""
    try:
        return _request(_json(doc))
    except (AttributeError, TypeError) as exc:
        raise ProtobufError(f"not an OTLP/JSON request: {exc}") from None


def _request(request: Mapping[str, Any]) -> bytes:
    out = []
    for resource_spans in request.get("resourceSpans", ()):
        scopes = [
            _scope_field(ss) + b"".join(map(encode_span, ss.get("spans", ()))) for ss in resource_spans.get("scopeSpans", ())
        ]
        parts = [_resource_field(resource_spans)] + [_field(b"\x12", s) for s in scopes]
        out.append(_field(b"\x0a", b"".join(parts)))
    return b"".join(out)


@dataclass(frozen=True)
class ProtobufEnvelope:
    """The resource and scope around the span records of every request, encoded once.

    `body` and `size` mirror `mapping.Envelope` (protobuf has no separator between records,
    so `count` does not change the size)."""

    resource: bytes  # the ResourceSpans.resource field (framed), or b""
    scope: bytes  # the ScopeSpans.scope field (framed), or b""

    @classmethod
    def of(cls, request: bytes | Mapping[str, Any]) -> ProtobufEnvelope:
        """The envelope of a one-resource, one-scope OTLP/JSON request (for example
        `Envelope.body([])`); the request's spans, if any, are not part of it."""
        resource_spans = _json(request).get("resourceSpans", ())
        if len(resource_spans) != 1 or len(resource_spans[0].get("scopeSpans", ())) != 1:
            raise ProtobufError("an envelope is one resourceSpans with one scopeSpans")
        scope_spans = resource_spans[0]["scopeSpans"][0]
        return cls(_resource_field(resource_spans[0]), _scope_field(scope_spans))

    def _head(self, spans_bytes: int) -> bytes:
        scope_spans = len(self.scope) + spans_bytes
        scope_field = b"\x12" + _varint(scope_spans) + self.scope
        resource_spans = len(self.resource) + len(scope_field) + spans_bytes
        return b"\x0a" + _varint(resource_spans) + self.resource + scope_field

    def body(self, spans: Sequence[bytes]) -> bytes:
        return b"".join((self._head(sum(map(len, spans))), *spans))

    def size(self, spans_bytes: int, count: int) -> int:
        return len(self._head(spans_bytes)) + spans_bytes
