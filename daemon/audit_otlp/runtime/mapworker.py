"""The mapping helper process (runtime/maphelper.py is the daemon's side; docs/design.md,
"Mapping on the second core"): it receives a lane's mapping stage, maps the chunks it is sent
with `mapchunk.map_chunk`, and gives the stage back. It imports only what mapping needs."""

from __future__ import annotations

import array
import pickle
import signal
import socket
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

from audit_otlp.delivery.batching import BatchLimits, SpanBudget
from audit_otlp.delivery.encoding import Encoding
from audit_otlp.mapping.chain import ChainHasher, ChainJudge, ChainState, ChainVerdict
from audit_otlp.mapping.ids import IdentityWindow, MappingOptions
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.runtime.mapchunk import MappedChunk, map_chunk
from audit_otlp.source.lines import Line


class MapperState(NamedTuple):
    """A lane's mapping stage, as it moves between the daemon and the helper (one pickle, so the
    judge keeps sharing the chain state)."""

    options: MappingOptions
    hasher: ChainHasher | None
    chain: ChainState
    identity: IdentityWindow
    line_number: int
    gap: str | None
    judge: ChainJudge | None
    cutter_spans: int
    cutter_bytes: int


class StartHelper(NamedTuple):
    state: MapperState
    encoding: Encoding
    source: str | None  # with several audit logs, the name every span carries
    limits: BatchLimits


class MapLines(NamedTuple):
    text: bytes  # the lines, each but the last followed by a newline (consecutive lines of one file)
    first_offset: int
    last_end: int  # the last line's end (it may be a final line without a newline)
    digests: bytes  # the lines' SHA-256 digests, joined (the daemon hashed them when it split)
    first_line_number: int
    observed_ns: int
    gap: str | None
    limits: BatchLimits
    link_hashes: list[str | None] | None  # each line's chain hash, worked out by the daemon


class GiveBack(NamedTuple):
    pass


class RecordedEvents:
    """The mapping stage's events, recorded in the helper and replayed by the daemon in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []

    def malformed_line(self, reason: str) -> None:
        self.events.append(("malformed_line", (reason,)))

    def chain_break(self, verdict: ChainVerdict, offset: int, line_number: int) -> None:
        self.events.append(("chain_break", (verdict, offset, line_number)))

    def chain_fork(self) -> None:
        self.events.append(("chain_fork", ()))

    def chain_note(self, message: str) -> None:
        self.events.append(("chain_note", (message,)))

    def take(self) -> list[tuple[str, tuple[Any, ...]]]:
        events, self.events = self.events, []
        return events


def state_of(mapper: RowMapper, cutter: SpanBudget) -> MapperState:
    return MapperState(
        mapper.options,
        mapper.hasher,
        mapper.chain,
        mapper.identity,
        mapper.line_number,
        mapper.gap,
        mapper.judge,
        cutter.count,
        cutter.bytes,
    )


def restore(mapper: RowMapper, cutter: SpanBudget, state: MapperState) -> None:
    """Put a mapping stage back as the helper left it."""
    mapper.hasher, mapper.chain, mapper.identity = state.hasher, state.chain, state.identity
    mapper.line_number, mapper.gap, mapper.judge = state.line_number, state.gap, state.judge
    cutter.count, cutter.bytes = state.cutter_spans, state.cutter_bytes


# Messages are pickles, each after its length (8 bytes, big-endian).
LENGTH_PREFIX = struct.Struct(">Q")
# Room for the chunks in flight both ways, so neither side's write waits on the other's read.
SOCKET_BUFFER = 8 * 1024 * 1024


def framed(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return LENGTH_PREFIX.pack(len(payload)) + payload


# A mapped chunk goes back as a pickle of everything but its spans, then the spans as one raw
# frame (joined, their lengths in the pickle): pickling ~250 bytes objects a chunk cost the helper
# ~2 µs a span, joining them ~0.3 (tests/benchmarks/bench_helper_split.py weighs the two sides).
SPAN_LENGTHS = "I"  # array typecode of the span lengths (a span is far below 4 GiB)


def spans_apart(mapped: MappedChunk) -> tuple[MappedChunk, bytes, bytes]:
    """(the chunk without its spans, their lengths, the spans joined)."""
    lengths = array.array(SPAN_LENGTHS, map(len, mapped.spans)).tobytes()
    return mapped._replace(spans=[]), lengths, b"".join(mapped.spans)


def spans_together(mapped: MappedChunk, lengths: bytes, joined: bytes) -> MappedChunk:
    """The chunk with its spans back, each an exact-size bytes object."""
    sizes = array.array(SPAN_LENGTHS)
    sizes.frombytes(lengths)
    spans, at = [], 0
    for size in sizes:
        spans.append(joined[at : at + size])
        at += size
    return mapped._replace(spans=spans)


class _Channel:
    """The helper's end: blocking reads and writes of framed pickles."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self) -> Any:
        (length,) = LENGTH_PREFIX.unpack(self._exactly(LENGTH_PREFIX.size))
        return pickle.loads(self._exactly(length))

    def send(self, message: Any) -> None:
        self.sock.sendall(framed(message))

    def send_mapped(self, mapped: MappedChunk, events: list[tuple[str, tuple[Any, ...]]]) -> None:
        rest, lengths, joined = spans_apart(mapped)
        self.sock.sendall(framed((rest, events, lengths)) + LENGTH_PREFIX.pack(len(joined)))
        self.sock.sendall(joined)

    def _exactly(self, n: int) -> bytes:
        buffer = bytearray(n)
        view, got = memoryview(buffer), 0
        while got < n:
            read = self.sock.recv_into(view[got:])
            if not read:
                raise EOFError
            got += read
        return bytes(buffer)


def main(fd: int) -> None:
    """The helper process's entry point: `fd` is its end of the socket pair."""
    # The daemon decides when it stops (a signal to the whole group, systemd's stop or a Ctrl-C,
    # must not end it in the middle of a chunk): it exits when the daemon closes the socket.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    serve(_Channel(socket.socket(fileno=fd)))


def serve(conn: _Channel) -> None:
    """The helper's main loop: map what arrives until told to give the stage back, or the daemon
    goes away (end of the socket)."""
    mapper: RowMapper | None = None
    cutter: SpanBudget | None = None
    recorder = RecordedEvents()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if type(message) is MapLines:
            assert mapper is not None and cutter is not None
            if cutter.limits != message.limits:
                cutter.limits = message.limits
            lines = list(_lines(message))
            mapped = map_chunk(
                mapper,
                cutter,
                lines,
                message.first_line_number,
                message.observed_ns,
                message.gap,
                kept_here=False,
                link_hashes=message.link_hashes,
            )
            try:
                conn.send_mapped(mapped, recorder.take())
            except OSError:  # the daemon went away
                return
        elif type(message) is StartHelper:
            state = message.state
            mapper = RowMapper(
                state.options,
                state.hasher,
                state.chain,
                recorder,
                state.line_number,
                state.identity,
                encode=message.encoding.encode_span,
                source=message.source,
            )
            mapper.gap, mapper.judge = state.gap, state.judge
            cutter = SpanBudget(message.encoding.envelope, message.limits)
            cutter.count, cutter.bytes = state.cutter_spans, state.cutter_bytes
        elif type(message) is GiveBack:
            assert mapper is not None and cutter is not None
            try:
                conn.send(state_of(mapper, cutter))
            except OSError:
                pass
            return


def _lines(message: MapLines) -> Iterator[Line]:
    digests, offset = message.digests, message.first_offset
    pieces = message.text.split(b"\n")
    last = len(pieces) - 1
    for i, data in enumerate(pieces):
        end = offset + len(data) + 1 if i < last else message.last_end
        yield Line(offset, end, data, digests[32 * i : 32 * i + 32])
        offset = end
