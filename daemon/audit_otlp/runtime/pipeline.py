"""The running pipeline: one read loop per audit log (lines -> mapped spans -> batches), the window
of unsettled batches, the export workers, and the acknowledgement that moves the checkpoint
(docs/design.md, "One cycle").

    Lane (one audit log):  Tailer --lines--> RowMapper + BatchBuilder --Batch--+
                                                                                  v
                                                 bounded queue --> N export workers
                                                                                  |
    CheckpointKeeper <--frontier-- the lane's AckTracker <--settled batch --------+

At most `export.max_in_flight` batches of a lane are unsettled and one more waits in the queue,
so memory is bounded however far the collector falls behind: when it is away, reading simply
stops and the file is the buffer. A batch holds rows of one lane only, so each audit log keeps
its own order, chain and position.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from audit_otlp.config import RetrySection
from audit_otlp.delivery.batching import Batch, BatchBuilder, SpanSource
from audit_otlp.delivery.retry import Backoff
from audit_otlp.delivery.sink import Abandoned, Outcome, Sink
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.runtime.logs import counted
from audit_otlp.runtime.runstate import RunState
from audit_otlp.source.lines import Line
from audit_otlp.source.tailer import LineChunk, Tailer
from audit_otlp.state.acks import AckTracker
from audit_otlp.state.checkpoint import Cursor
from audit_otlp.state.keeper import CheckpointKeeper

log = logging.getLogger("audit_otlp")


@dataclass
class Lane:
    """One audit log on its way: its tailer, its mapping stage (its own chain), its open batch
    and its acknowledgement frontier."""

    path: str  # the source's name in the checkpoint
    tailer: Tailer
    mapper: RowMapper
    builder: BatchBuilder
    acks: AckTracker = field(default_factory=AckTracker)
    unsettled_bytes: int = 0  # bytes of lines read but not yet settled
    breaks_before: int = 0  # chain breaks of this source before this run (from the checkpoint)

    def backlog_bytes(self) -> int:
        return self.tailer.backlog_bytes() + self.unsettled_bytes


class Pipeline:
    def __init__(
        self, lanes: list[Lane], sink: Sink, keeper: CheckpointKeeper, retry: RetrySection, window: int, state: RunState
    ) -> None:
        self.lanes = lanes
        self.sink = sink
        self.keeper = keeper
        self.retry = retry  # replaced on SIGHUP
        self.state = state
        # One batch waiting is enough to keep every worker busy (the readers refill it while they
        # send); each extra one would cost ~1 MB of RSS for nothing.
        self.queue: asyncio.Queue[tuple[Lane, Batch]] = asyncio.Queue(maxsize=1)
        self._window = window
        # Notified whenever a batch is settled: --once waits on it, and so does a reader while
        # its window of unsettled batches is full.
        self._settled = asyncio.Condition()
        self._busy_workers = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.settled_spans = 0  # this run, delivered or dead-lettered (for rates)
        self.settled_bytes = 0

    @property
    def unsettled(self) -> int:
        return sum(lane.acks.unsettled for lane in self.lanes)

    # -- reading -------------------------------------------------------------------------------

    async def read_loop(self, stopping: asyncio.Event, once: bool) -> None:
        await asyncio.gather(*(self._lane_loop(lane, stopping, once) for lane in self.lanes))

    async def _lane_loop(self, lane: Lane, stopping: asyncio.Event, once: bool) -> None:
        builder = lane.builder
        complete_cursor = self.keeper.position(lane.path)  # the end of the last line whose spans are all in `builder`
        while not stopping.is_set():
            deadline = builder.deadline()
            timeout = 0.0 if once else (None if deadline is None else max(deadline - time.monotonic(), 0.0))
            chunk = await lane.tailer.read(timeout)
            self.state.file_reachable = any(t.current is not None or t.draining for t in (x.tailer for x in self.lanes))
            if chunk is not None:
                complete_cursor = await self._consume(lane, chunk, complete_cursor)
            deadline = builder.deadline()
            if deadline is not None and (builder.full or time.monotonic() >= deadline or (once and chunk is None)):
                await self._flush(lane, complete_cursor)
            if once and chunk is None and lane.tailer.at_end:
                if builder.opened_at is not None:
                    await self._flush(lane, complete_cursor)
                return

    async def _consume(self, lane: Lane, chunk: LineChunk, cursor: Cursor) -> Cursor:
        """Map a chunk's lines into the lane's batch; returns the cursor after its last line.

        The hot loop of a catch-up: per line it only maps and appends. A Cursor (a frozen
        dataclass, ~1 µs to build) is made only when a batch is handed over and at the end of
        the chunk, from `done`: what the cursor after the last fully added line needs.
        """
        observed_ns = time.time_ns()
        builder, mapper = lane.builder, lane.mapper
        chain = mapper.chain
        path, identity, version = chunk.path, chunk.identity, chunk.version
        path_str = cursor.path  # the source's name (a rotated version is still that source)
        mapper.line_number = chunk.first_line_number - 1
        if chunk.gap is not None:
            mapper.mark_gap(chunk.gap)
        index = chunk.first_index  # lines handed out before the one being mapped
        consumed = chunk.lines[-1].end - chunk.lines[0].offset
        # Counted as backlog from the moment the tailer hands the lines over: _flush below may wait
        # a long time for a free export worker, and those bytes are not delivered meanwhile.
        lane.unsettled_bytes += consumed
        # (line, digest, chain hash, line number, lines counted by the identity window, index)
        done: tuple[Line, bytes, str | None, int, int, int] | None = None

        def cursor_after() -> Cursor:
            if done is None:
                return cursor
            line, digest, chain_hash, line_number, counted, after = done
            # The chain's recent links may include the line being mapped now: a superset, which
            # only ever turns a break into a fork after a restart; the digests must be exact.
            return Cursor(
                path_str,
                identity,
                line.end,
                digest.hex(),
                line.length if line.data is not None else None,
                chain_hash,
                line_number,
                chain_recent=tuple(chain.carried()),
                chain_seen=chain.seen,
                recent_digests=mapper.identity.carried(counted),
                version=version,
                line_index=after,
            )

        for line in chunk.lines:
            mapped = mapper.map_line(line, observed_ns)
            spans = mapped.spans
            if spans:
                sha = mapped.digest.hex()
                for span in spans:
                    if not builder.fits(span):
                        await self._flush(lane, cursor_after())
                    builder.add(span, SpanSource(path, identity, line.offset, line.data, sha, line.end))
            else:
                builder.touch()
            index += 1
            done = (line, mapped.digest, chain.last_hash, mapper.line_number, mapper.identity.pushed, index)
            if builder.full:
                await self._flush(lane, cursor_after())
        cursor = cursor_after()
        builder.source_bytes += consumed
        self.state.rows_read += len(chunk.lines)
        return cursor

    async def _flush(self, lane: Lane, end: Cursor) -> None:
        """Hand the lane's pending spans to the export workers.

        At most `export.max_in_flight` batches of a lane may be unsettled or settled-but-behind-
        the-frontier at once: when its oldest request is stuck in retries, the reader waits instead
        of letting newer batches pile up behind it, so a crash repeats at most the requests in flight."""
        async with self._settled:
            await self._settled.wait_for(lambda: lane.acks.unsettled < self._window)
        seq = lane.acks.register(end)
        batch = lane.builder.take(seq, end)
        await self.queue.put((lane, batch))

    async def wait_all_settled(self) -> None:
        async with self._settled:
            await self._settled.wait_for(lambda: not self.unsettled)

    # -- sending -------------------------------------------------------------------------------

    async def export_worker(self) -> None:
        while True:
            lane, batch = await self.queue.get()
            self._busy_workers += 1
            self._idle.clear()
            try:
                try:
                    await self._deliver_until_settled(batch)
                except Abandoned:
                    return  # shutdown: never accepted, so unsettled (the checkpoint stays before it)
                frontier = lane.acks.settle(batch.seq)
                self.keeper.advance(lane.path, frontier, lane.breaks_before + lane.mapper.chain.breaks)
                if frontier is not None:
                    lane.tailer.delivered(frontier)
                lane.unsettled_bytes -= batch.source_bytes
                self.settled_spans += len(batch.spans)
                self.settled_bytes += batch.source_bytes
                async with self._settled:
                    self._settled.notify_all()
            finally:
                self._busy_workers -= 1
                if self._busy_workers == 0:
                    self._idle.set()
                self.queue.task_done()

    async def _deliver_until_settled(self, batch: Batch) -> Outcome:
        """The sink retries every failure it knows; an unexpected error must not kill the worker
        (the batch would never settle and the checkpoint would stall), so log it and try again."""
        backoff = Backoff(self.retry.initial_backoff, self.retry.max_backoff)
        while True:
            try:
                return await self.sink.deliver(batch)
            except Abandoned:
                raise
            except Exception:  # noqa: BLE001 - any bug in a sink must cost time, never rows
                log.exception("unexpected error while delivering a batch of %d spans; retrying it", len(batch))
                await asyncio.sleep(backoff.next_delay())

    async def drain_in_flight(self, grace: float, stop_now: asyncio.Event) -> None:
        """Shutdown: requests waiting to be retried are abandoned at once (`Sink.stop_retrying`);
        requests on the wire get `grace` seconds to be answered, or until `stop_now` (a second
        Ctrl-C). Whatever is abandoned was never accepted and is sent again by the next run."""
        self.sink.stop_retrying()
        if self._busy_workers == 0:
            return
        idle = asyncio.ensure_future(self._idle.wait())
        now = asyncio.ensure_future(stop_now.wait())
        try:
            await asyncio.wait((idle, now), timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            now.cancel()
        on_wire = self.state.requests_on_wire
        if self._idle.is_set() or not on_wire:
            return
        why = "stopping at once" if stop_now.is_set() else "grace period over"
        log.warning("%s: abandoning %s on the wire (never acknowledged: sent again next run)", why, counted(on_wire, "request"))

    # -- reporting -----------------------------------------------------------------------------

    def backlog_bytes(self) -> int:
        """Not yet delivered = not yet read + read but not yet settled."""
        return sum(lane.backlog_bytes() for lane in self.lanes)
