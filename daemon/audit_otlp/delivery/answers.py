"""The collector's answers, in either encoding: the partial success of a 2xx and the error body
of a 4xx/5xx. Each is read as the answer's Content-Type says, else as the request was sent.

Protobuf (ExportTraceServiceResponse.partial_success, google.rpc.Status) is read with a small
wire-format reader: no protobuf runtime at run time. The request side is `protobuf`. An answer
that cannot be read is full success on a 2xx (as an empty body, Sentry's 202, is), and an error
body is kept as it came.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import orjson

from audit_otlp.delivery.protobuf import CONTENT_TYPE, ProtobufError

_UINT64_MAX = 2**64 - 1


class PartialSuccess(NamedTuple):
    rejected_spans: int = 0
    error_message: str = ""


class RpcStatus(NamedTuple):
    code: int = 0
    message: str = ""
    detail_types: tuple[str, ...] = ()  # the type URLs of `details` (e.g. ...google.rpc.BadRequest)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    for index in range(pos, min(pos + 10, len(data))):
        byte = data[index]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _UINT64_MAX, index + 1
        shift += 7
    raise ProtobufError("truncated or overlong varint")


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field of a message; unknown ones included."""
    pos, size = 0, len(data)
    while pos < size:
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > size:
                raise ProtobufError("truncated fixed-width field")
            value, pos = int.from_bytes(data[pos : pos + width], "little"), pos + width
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > size:
                raise ProtobufError("truncated length-delimited field")
            value, pos = data[pos : pos + length], pos + length
        else:  # groups (3, 4) are not used by any message here
            raise ProtobufError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def decode_partial_success(body: bytes) -> PartialSuccess:
    """ExportTraceServiceResponse.partial_success; an empty body is full success.
    Raises ProtobufError for a body that is not valid protobuf."""
    rejected, message = 0, ""
    for number, wire, value in _fields(body):
        if number == 1 and wire == 2:  # partial_success (occurrences merge, last value wins)
            assert isinstance(value, bytes)
            for inner, inner_wire, item in _fields(value):
                if inner == 1 and inner_wire == 0:
                    assert isinstance(item, int)
                    rejected = _signed(item, 64)
                elif inner == 2 and inner_wire == 2:
                    assert isinstance(item, bytes)
                    message = _text(item)
    return PartialSuccess(rejected, message)


def decode_status(body: bytes) -> RpcStatus:
    """A google.rpc.Status error body: code, message, and the type URL of each detail.
    Raises ProtobufError for a body that is not valid protobuf."""
    code, message, details = 0, "", []
    for number, wire, value in _fields(body):
        if number == 1 and wire == 0:
            assert isinstance(value, int)
            code = _signed(value, 32)
        elif number == 2 and wire == 2:
            assert isinstance(value, bytes)
            message = _text(value)
        elif number == 3 and wire == 2:  # google.protobuf.Any: type_url = 1, value = 2
            assert isinstance(value, bytes)
            details.append(
                next(
                    (_text(v) for n, w, v in _fields(value) if n == 1 and isinstance(v, bytes)),
                    "",
                )
            )
    return RpcStatus(code, message, tuple(details))


def _is_protobuf(content_type: str, protocol: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    if media in (CONTENT_TYPE, "application/protobuf"):
        return True
    if media == "application/json" or media.startswith("text/"):
        return False
    return protocol == "http/protobuf"


def read_partial_success(body: bytes, content_type: str, protocol: str) -> tuple[int, str]:
    """(rejected spans, error message) of a 2xx answer; (0, "") when there is none to read."""
    if not _is_protobuf(content_type, protocol):
        return parse_partial_success(body)
    try:
        rejected, message = decode_partial_success(body)
    except ProtobufError:
        return 0, ""
    return max(rejected, 0), message


def parse_partial_success(body: bytes) -> tuple[int, str]:
    """(rejectedSpans, errorMessage) from an OTLP/JSON ExportTraceServiceResponse; (0, "") if absent."""
    if not body.strip():
        return 0, ""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0, ""
    partial = doc.get("partialSuccess") if isinstance(doc, dict) else None
    if not isinstance(partial, dict):
        return 0, ""
    try:
        rejected = int(partial.get("rejectedSpans") or 0)
    except (TypeError, ValueError):
        rejected = 0
    return max(rejected, 0), str(partial.get("errorMessage") or "")


def readable_error(body: bytes, content_type: str, protocol: str) -> bytes:
    """An error body for people (the dead-letter file): a protobuf google.rpc.Status as the JSON
    a JSON collector would have sent; any other body as it came."""
    if not body or not _is_protobuf(content_type, protocol):
        return body
    try:
        status = decode_status(body)
    except ProtobufError:
        return body
    shown: dict[str, object] = {"code": status.code, "message": status.message}
    if status.detail_types:
        shown["details"] = [{"@type": url} for url in status.detail_types]
    return orjson.dumps(shown)
