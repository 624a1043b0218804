"""The two request encodings of OTLP/HTTP (`export.protocol`): http/json and http/protobuf.

The one place that knows which span encoder and request envelope go together: wiring picks an
`Encoding`, the mapper encodes each span once with it, and the batcher and the policy frame
requests with its envelope (both envelopes offer `RequestEnvelope`), so a 413 split or a 400
bisection re-joins encoded spans in either encoding. `--dry-run` and `export` print OTLP/JSON
whatever the protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from audit_otlp.delivery import protobuf
from audit_otlp.mapping import envelope as json_encoding

JSON, PROTOBUF = "http/json", "http/protobuf"
CONTENT_TYPES = {JSON: "application/json", PROTOBUF: protobuf.CONTENT_TYPE}


class RequestEnvelope(Protocol):
    """What batching and the policy need of an envelope, in either encoding."""

    def body(self, spans: Sequence[bytes]) -> bytes: ...
    def size(self, spans_bytes: int, count: int) -> int: ...


@dataclass(frozen=True)
class Encoding:
    protocol: str
    encode_span: Callable[[Mapping[str, Any]], bytes]
    envelope: RequestEnvelope

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.protocol]


def encoding_for(protocol: str, envelope: json_encoding.Envelope) -> Encoding:
    """The encoder and envelope of `protocol`; the protobuf envelope carries the same resource
    and scope as the JSON one it is made from."""
    if protocol == PROTOBUF:
        return Encoding(PROTOBUF, protobuf.encode_span, protobuf.ProtobufEnvelope.of(envelope.body([])))
    return Encoding(JSON, json_encoding.encode_span, envelope)
