"""A real OTLP/HTTP collector on 127.0.0.1 for tests: records every request, checks that each
body is a valid OTLP ExportTraceServiceRequest (opentelemetry-proto), and answers as the test
tells it to (a status, a delay, a partial success, a dropped connection).

Both encodings, chosen by Content-Type as a real collector does: a protobuf body is parsed with
opentelemetry-proto, must re-serialize to the same bytes (nothing unknown, nothing misplaced),
and is recorded as the OTLP/JSON document it stands for, so every test reads one form. Answers
to a protobuf request go back as protobuf: the test's JSON reply body is converted
(ExportTraceServiceResponse on a 2xx, google.rpc.Status otherwise)."""

from __future__ import annotations

import base64
import functools
import gzip
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

PROTOBUF = "application/x-protobuf"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop_connection: bool = False  # close the socket without answering
    content_type: str | None = None  # None: the request's encoding (the body is converted to it)


def to_proto(doc: dict[str, Any]) -> ExportTraceServiceRequest:
    """Parse OTLP/JSON with the official proto: ids are hex in OTLP/JSON, base64 in proto3 JSON."""
    converted = orjson.loads(orjson.dumps(doc))
    for rs in converted.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    message = ExportTraceServiceRequest()
    json_format.ParseDict(converted, message)
    return message


def from_proto_bytes(raw: bytes) -> dict[str, Any]:
    """A protobuf ExportTraceServiceRequest -> its OTLP/JSON document (ids hex, enums as integers).
    Raises if the bytes are not exactly what opentelemetry-proto itself would write for it."""
    message = ExportTraceServiceRequest.FromString(raw)
    if message.SerializeToString() != raw:
        raise ValueError("protobuf body differs from its own re-serialization (unknown or misplaced fields)")
    doc = json_format.MessageToDict(message, use_integers_for_enums=True)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64decode(span[key]).hex()
    return doc


def _as_protobuf(status: int, body: bytes) -> bytes | None:
    """The test's JSON reply body as the protobuf a collector sends back; None if it is not JSON of that message."""
    message: Message = ExportTraceServiceResponse() if 200 <= status < 300 else Status()
    try:
        json_format.Parse(body or b"{}", message)
    except json_format.ParseError:
        return None
    return message.SerializeToString()


@dataclass
class Received:
    doc: dict[str, Any]
    headers: dict[str, str]
    status: int  # what we answered
    path: str

    @property
    def protobuf(self) -> bool:
        return self.headers.get("content-type", "").split(";")[0].strip() == PROTOBUF

    @property
    def spans(self) -> list[dict[str, Any]]:
        return [s for rs in self.doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]

    @functools.cached_property
    def seqs(self) -> list[int]:
        """The `seq` of each of its spans that has one (worked out once: a long run's tests ask
        for every acknowledged row many times)."""
        return [seq for s in self.spans if (seq := seq_of(s)) is not None]


class Collector:
    """Start with `with Collector() as c:`; `c.endpoint` is the traces URL."""

    def __init__(self, responder: Callable[[dict[str, Any], int], Reply] | None = None, port: int = 0) -> None:
        self.responder = responder or (lambda doc, n: Reply())
        self.requests: list[Received] = []
        self.invalid: list[str] = []
        self._lock = threading.RLock()  # wait_for predicates may call accepted()
        self._cond = threading.Condition(self._lock)
        self._count = 0
        self.handling = 0  # requests being answered right now
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: avoid 40 ms delayed-ACK stalls

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                with collector._lock:
                    collector.handling += 1
                try:
                    self._post()
                finally:
                    with collector._lock:
                        collector.handling -= 1

            def _post(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                protobuf = (self.headers.get("Content-Type") or "").split(";")[0].strip() == PROTOBUF
                try:
                    if protobuf:
                        doc = from_proto_bytes(raw)
                    else:
                        doc = orjson.loads(raw)
                        to_proto(doc)
                except Exception as exc:  # noqa: BLE001 - any parse failure is a test failure
                    with collector._lock:
                        collector.invalid.append(f"{type(exc).__name__}: {exc}")
                    self._answer(Reply(400, b'{"message":"invalid"}'), protobuf)
                    return
                with collector._lock:
                    collector._count += 1
                    n = collector._count
                reply = collector.responder(doc, n)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop_connection:
                    self.close_connection = True
                    self.connection.close()
                    return
                with collector._cond:
                    collector.requests.append(
                        Received(doc, {k.lower(): v for k, v in self.headers.items()}, reply.status, self.path)
                    )
                    collector._cond.notify_all()
                self._answer(reply, protobuf)

            def _answer(self, reply: Reply, protobuf: bool) -> None:
                body, content_type = reply.body, reply.content_type or "application/json"
                if protobuf and reply.content_type is None:
                    converted = _as_protobuf(reply.status, reply.body)
                    if converted is not None:  # else (not JSON of the message) sent as it is
                        body, content_type = converted, PROTOBUF
                self.send_response(reply.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        ThreadingHTTPServer.allow_reuse_address = True  # a test may restart a collector on the same port
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what arrived --------------------------------------------------------------------------

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def accepted_spans(self) -> list[dict[str, Any]]:
        return [s for r in self.accepted() for s in r.spans]

    def accepted_seqs(self) -> list[int]:
        """The `seq` attribute of every acknowledged span, in arrival order (duplicates kept)."""
        return [seq for r in self.accepted() for seq in r.seqs]

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 20.0) -> bool:
        """Wait until `predicate` holds, looking again after each request (at least every 0.2 s).
        The predicate runs outside the lock: under it, a predicate that reads every request of a
        long run would hold up every request arriving meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = len(self.requests)
            if predicate(self):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                if len(self.requests) == seen:
                    self._cond.wait(min(remaining, 0.2))

    def wait_for_spans(self, n: int, timeout: float = 20.0) -> bool:
        return self.wait_for(lambda c: len([s for r in c.requests if 200 <= r.status < 300 for s in r.spans]) >= n, timeout)


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.get("attributes", []):
        ((kind, value),) = kv["value"].items()
        out[kv["key"]] = int(value) if kind == "intValue" else value
    return out


def seq_of(span: dict[str, Any]) -> int | None:
    """Rows from auditgen carry `seq`; it reaches the span through the target path."""
    target = attrs(span).get("audit.target")
    if isinstance(target, str) and target.startswith("src/file_"):
        return int(target[len("src/file_") : -3])
    return None


class Mood:
    """A collector that is up (200 at once), slow (200 after a delay, fixed or drawn from a range)
    or down (503); a test changes `mode` while the daemon runs."""

    def __init__(self, mode: str = "up", slow: float | tuple[float, float] = 0.3, seed: int = 0) -> None:
        self.mode = mode
        self.slow = slow
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def __call__(self, doc: dict[str, Any], n: int) -> Reply:
        if self.mode == "down":
            return Reply(503, b'{"message":"down"}')
        if self.mode == "slow":
            if isinstance(self.slow, tuple):
                with self._lock:
                    delay = self._rng.uniform(*self.slow)
            else:
                delay = self.slow
            return Reply(200, delay=delay)
        return Reply()
