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
import ctypes
import ctypes.util
import logging
import pickle
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from audit_otlp.delivery.batching import BatchLimits
from audit_otlp.mapping.chain import ChainHasher
from audit_otlp.mapping.rows import RowEvents, link_hashes
from audit_otlp.runtime.exits import FatalError
from audit_otlp.runtime.mapchunk import MappedChunk
from audit_otlp.runtime.mapworker import (
    LENGTH_PREFIX,
    SOCKET_BUFFER,
    GiveBack,
    MapLines,
    MapperState,
    StartHelper,
    framed,
    spans_together,
)
from audit_otlp.source.lines import Line

if TYPE_CHECKING:
    from audit_otlp.source.queue import LineChunk

log = logging.getLogger("audit_otlp")

# Chunks sent and not yet applied: four keep the helper busy while the daemon applies one and
# sends (each is at most a 256 KiB read, about 1 MB of spans on the way back).
IN_FLIGHT_CHUNKS = 4


class HelperLost(FatalError):
    """The helper process went away with a lane's mapping stage: the run ends (exit 3), and the
    next one resumes from the checkpoint, which stands before every line the helper held."""


def replay(events: list[tuple[str, tuple[Any, ...]]], to: RowEvents) -> None:
    for name, args in events:
        getattr(to, name)(*args)


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
                [sys.executable, "-c", f"from audit_otlp.runtime.mapworker import main; main({theirs.fileno()})"],
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
            (length,) = LENGTH_PREFIX.unpack(await self.reader.readexactly(LENGTH_PREFIX.size))
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

    async def send(
        self, chunk: LineChunk, lines: list[Line], consumed: int, limits: BatchLimits, hasher: ChainHasher | None
    ) -> None:
        """Send a chunk to map. With chain verification on, the daemon hashes its lines for the
        chain first (the helper is the slower side of a catch-up: this evens the two out)."""
        message = MapLines(
            b"\n".join([line.data for line in lines]),  # type: ignore[misc]  # only kept lines come here
            lines[0].offset,
            lines[-1].end,
            b"".join([line.digest for line in lines]),
            chunk.first_line_number,
            time.time_ns(),
            chunk.gap,
            limits,
            link_hashes(hasher, lines) if hasher is not None else None,
        )
        await self._send(message)
        self.sent.append(Sent(chunk, consumed))

    async def receive(self) -> tuple[Sent, MappedChunk, list[tuple[str, tuple[Any, ...]]]]:
        """The oldest chunk sent, mapped (its spans follow the pickle as one raw frame)."""
        rest, events, lengths = await self._answer()
        try:
            (length,) = LENGTH_PREFIX.unpack(await self.reader.readexactly(LENGTH_PREFIX.size))
            joined = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, OSError) as exc:
            raise self._lost(exc) from exc
        return self.sent.popleft(), spans_together(rest, lengths, joined), events

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
        """Stop the helper now (shutdown, or it failed, or caught up): whatever it held and was
        not applied is dropped, and the memory its chunks passed through is given back."""
        self.writer.close()  # the helper sees the end of the socket and exits
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        trim_heap()


def trim_heap() -> None:
    """A catch-up passes MBs of spans a second through the daemon's heap; once it is over, glibc
    keeps the freed pages (its threshold for giving large blocks back rises as they are freed):
    malloc_trim returns them, so an idle daemon's RSS is what it holds, not what it once held."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        pass
