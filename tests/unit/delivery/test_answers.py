"""Reading the collector's answers in either encoding: which decoder a body gets (the answer's
Content-Type first, else the request's encoding), and that nothing unreadable is fatal."""

from __future__ import annotations

import orjson
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from audit_otlp.delivery.answers import read_partial_success, readable_error
from audit_otlp.delivery.encoding import JSON, PROTOBUF

PB_PARTIAL = ExportTraceServiceResponse(partial_success={"rejected_spans": 3, "error_message": "old"}).SerializeToString()
PB_NEGATIVE = ExportTraceServiceResponse(partial_success={"rejected_spans": -2}).SerializeToString()
JSON_PARTIAL = b'{"partialSuccess":{"rejectedSpans":"3","errorMessage":"old"}}'


@pytest.mark.parametrize(
    ("body", "content_type", "protocol", "expected"),
    [
        (PB_PARTIAL, "application/x-protobuf", PROTOBUF, (3, "old")),
        (PB_PARTIAL, "application/x-protobuf; charset=binary", JSON, (3, "old")),  # the answer's type wins
        (PB_PARTIAL, "", PROTOBUF, (3, "old")),  # no type: as the request was sent
        (JSON_PARTIAL, "application/json", PROTOBUF, (3, "old")),  # a JSON answer to a protobuf request
        (JSON_PARTIAL, "", JSON, (3, "old")),
        (b"", "application/x-protobuf", PROTOBUF, (0, "")),  # Sentry-style empty 2xx
        (b"\xff\xff", "application/x-protobuf", PROTOBUF, (0, "")),  # unreadable: full success
        (b"accepted", "text/plain", PROTOBUF, (0, "")),
        (PB_NEGATIVE, "application/x-protobuf", PROTOBUF, (0, "")),  # a negative count is no rejection
    ],
    ids=[
        "protobuf",
        "protobuf_type_wins",
        "untyped_protobuf_request",
        "json_to_protobuf_request",
        "untyped_json_request",
        "empty",
        "garbage",
        "text",
        "negative",
    ],
)
def test_partial_success_is_read_by_content_type(
    body: bytes, content_type: str, protocol: str, expected: tuple[int, str]
) -> None:
    assert read_partial_success(body, content_type, protocol) == expected


def test_a_protobuf_error_body_is_kept_readable_for_the_dead_letter_file() -> None:
    status = status_pb2.Status(code=3, message="bad span ✗")
    status.details.add(type_url="type.googleapis.com/google.rpc.BadRequest", value=b"")
    shown = orjson.loads(readable_error(status.SerializeToString(), "application/x-protobuf", PROTOBUF))
    assert shown == {"code": 3, "message": "bad span ✗", "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest"}]}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"Request body is invalid ExportTraceServiceRequest", "text/plain; charset=utf-8"),  # Phoenix's 422
        (b'{"code":3,"message":"poison"}', "application/json"),
        (b"\x0a\x05ab", "application/x-protobuf"),  # truncated: kept as it came
        (b"", "application/x-protobuf"),
    ],
)
def test_other_error_bodies_are_kept_as_they_came(body: bytes, content_type: str) -> None:
    assert readable_error(body, content_type, PROTOBUF) == body
