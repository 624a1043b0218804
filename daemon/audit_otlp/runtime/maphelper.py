"""Mapping on the second core: a helper process that runs a lane's mapping stage during a catch-up.

Python runs one thread at a time, so a daemon that reads, maps and sends in one process uses one
core. While a lane has a backlog worth it (`mapping.helper_min_backlog`), the lane hands its
mapping stage (the RowMapper with its chain and identity window, and where the open batch
stands) to a helper process and sends it the chunks it reads, in file order; the helper runs
`mapchunk.map_chunk` on each and sends back the encoded spans, the batch cuts with their
checkpoint state, and the events to count and log. The daemon meanwhile reads the next chunk,
hands batches to the export workers and sends. Caught up (or before a chunk only the daemon can
map), the lane takes its mapping stage back and the helper exits: an idle daemon has no helper.

Nothing here changes what is sent or when the checkpoint moves: the same code maps the same
lines in the same order, the chunks are applied in the order they were read, and the helper
only ever cuts a batch earlier than the daemon would (its budget does not see a flush on
max_wait), never later. If the helper dies, the lane maps in the daemon again from the last
applied chunk on (the chunks it held are mapped again: nothing is lost or repeated).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from audit_otlp.delivery.batching import BatchLimits, SpanBudget
from audit_otlp.delivery.encoding import Encoding
from audit_otlp.mapping.chain import ChainHasher, ChainJudge, ChainState, ChainVerdict
from audit_otlp.mapping.ids import IdentityWindow, MappingOptions
from audit_otlp.mapping.rows import RowEvents, RowMapper
from audit_otlp.runtime.exits import FatalError
from audit_otlp.runtime.mapchunk import MappedChunk, map_chunk
from audit_otlp.source.lines import Line
from audit_otlp.source.queue import LineChunk

log = logging.getLogger("audit_otlp")

# Chunks sent and not yet applied: two keep the helper busy while the daemon applies the one
# before (each is at most a 256 KiB read, about 1 MB of spans on the way back).
IN_FLIGHT_CHUNKS = 2


class HelperLost(FatalError):
    """The helper process went away with a lane's mapping stage: the run ends (exit 3), and the
    next one resumes from the checkpoint, which stands before every line the helper held."""


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


def replay(events: list[tuple[str, tuple[Any, ...]]], to: RowEvents) -> None:
    for name, args in events:
        getattr(to, name)(*args)


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


# -- the helper process ------------------------------------------------------------------------


# Messages are pickles, each after its length (8 bytes, big-endian).
_LENGTH = struct.Struct(">Q")
# Room for the chunks in flight both ways, so neither side's write waits on the other's read.
SOCKET_BUFFER = 8 * 1024 * 1024


def framed(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


class _Channel:
    """The helper's end: blocking reads and writes of framed pickles."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self) -> Any:
        (length,) = _LENGTH.unpack(self._exactly(_LENGTH.size))
        return pickle.loads(self._exactly(length))

    def send(self, message: Any) -> None:
        self.sock.sendall(framed(message))

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
                mapper, cutter, lines, message.first_line_number, message.observed_ns, message.gap, kept_here=False
            )
            try:
                conn.send((mapped, recorder.take()))
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


# -- the daemon's side -------------------------------------------------------------------------


@dataclass
class Sent:
    """A chunk sent to the helper and not yet applied."""

    chunk: LineChunk  # its lines name the spans' sources
    consumed: int


class MapHelper:
    """One lane's helper process, seen from the daemon: asyncio streams over the socket pair
    (no thread hop per chunk)."""

    def __init__(self, process: subprocess.Popen[bytes], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.process = process
        self.reader = reader
        self.writer = writer
        self.sent: deque[Sent] = deque()

    @classmethod
    async def start(cls, start: StartHelper) -> MapHelper:
        # A process of its own (not multiprocessing's, whose resource tracker would outlive the
        # helper), talking framed pickles over a socket pair; it inherits only its end of it.
        ours, theirs = socket.socketpair()
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        try:
            process = await asyncio.to_thread(
                subprocess.Popen,
                [sys.executable, "-c", f"from audit_otlp.runtime.maphelper import main; main({theirs.fileno()})"],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=SOCKET_BUFFER)
        helper = cls(process, reader, writer)
        await helper._send(start)
        return helper

    async def _send(self, message: Any) -> None:
        try:
            self.writer.write(framed(message))
            await self.writer.drain()
        except OSError as exc:
            raise self._lost(exc) from exc

    async def _answer(self) -> Any:
        try:
            (length,) = _LENGTH.unpack(await self.reader.readexactly(_LENGTH.size))
            return pickle.loads(await self.reader.readexactly(length))
        except (asyncio.IncompleteReadError, OSError) as exc:
            raise self._lost(exc) from exc

    def _lost(self, exc: BaseException) -> HelperLost:
        try:
            self.process.wait(1.0)  # it is gone or going: say how it ended
        except subprocess.TimeoutExpired:
            pass
        why = self.exit_reason() or repr(exc)
        return HelperLost(f"the mapping helper process stopped ({why}); the next run resumes from the checkpoint")

    @property
    def full(self) -> bool:
        return len(self.sent) >= IN_FLIGHT_CHUNKS

    async def send(self, chunk: LineChunk, lines: list[Line], consumed: int, limits: BatchLimits) -> None:
        message = MapLines(
            b"\n".join([line.data for line in lines]),  # type: ignore[misc]  # only kept lines come here
            lines[0].offset,
            lines[-1].end,
            b"".join([line.digest for line in lines]),
            chunk.first_line_number,
            time.time_ns(),
            chunk.gap,
            limits,
        )
        await self._send(message)
        self.sent.append(Sent(chunk, consumed))

    async def receive(self) -> tuple[Sent, MappedChunk, list[tuple[str, tuple[Any, ...]]]]:
        """The oldest chunk sent, mapped."""
        mapped, events = await self._answer()
        return self.sent.popleft(), mapped, events

    async def give_back(self) -> MapperState:
        """The mapping stage as the helper left it (every chunk sent must have been received)."""
        assert not self.sent
        await self._send(GiveBack())
        state: MapperState = await self._answer()
        await asyncio.to_thread(self.process.wait, 5.0)
        self.close()
        return state

    def exit_reason(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def close(self) -> None:
        """Stop the helper now (shutdown, or it failed): whatever it held was never applied."""
        self.writer.close()  # the helper sees the end of the socket and exits
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
