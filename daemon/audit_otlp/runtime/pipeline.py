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

from audit_otlp.config import RetrySection
from audit_otlp.delivery.batching import Batch
from audit_otlp.delivery.retry import Backoff
from audit_otlp.delivery.sink import Abandoned, Outcome, Sink
from audit_otlp.runtime.lane import Lane
from audit_otlp.runtime.logs import counted
from audit_otlp.runtime.mapchunk import Cut, MappedChunk, map_chunk
from audit_otlp.runtime.maphelper import MapHelper, replay
from audit_otlp.runtime.mapworker import StartHelper, restore, state_of
from audit_otlp.runtime.runstate import RunState
from audit_otlp.source.tailer import LineChunk
from audit_otlp.state.checkpoint import Cursor
from audit_otlp.state.keeper import CheckpointKeeper

log = logging.getLogger("audit_otlp")

# Following the end of a file, the reader pauses this long (at most half of batch.max_wait)
# after each read, so a writer appending every few ms costs one wake-up per pause.
READ_COALESCE = 0.1


class Pipeline:
    def __init__(
        self,
        lanes: list[Lane],
        sink: Sink,
        keeper: CheckpointKeeper,
        retry: RetrySection,
        window: int,
        state: RunState,
        helper_min_backlog: int | None = None,
    ) -> None:
        self.lanes = lanes
        self.helper_min_backlog = helper_min_backlog  # mapping.helper_min_backlog (None: off)
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
        self._reading: tuple[asyncio.Event, bool] | None = None  # (stopping, once) once read_loop runs
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._lane_added = asyncio.Event()

    @property
    def unsettled(self) -> int:
        return sum(lane.acks.unsettled for lane in self.lanes)

    # -- reading -------------------------------------------------------------------------------

    async def read_loop(self, stopping: asyncio.Event, once: bool) -> None:
        """Read every lane until `stopping` (or, `once`, to the end of each); lanes added meanwhile
        (`add_lane`) are read too. A lane's crash ends it, and the run."""
        self._reading = stopping, once
        for lane in self.lanes:
            self._lane_tasks.add(asyncio.create_task(self._lane_loop(lane, stopping, once), name=f"read {lane.path}"))
        try:
            while self._lane_tasks:
                added = asyncio.create_task(self._lane_added.wait())
                done, _ = await asyncio.wait({*self._lane_tasks, added}, return_when=asyncio.FIRST_COMPLETED)
                added.cancel()
                self._lane_added.clear()
                for task in done - {added}:
                    self._lane_tasks.discard(task)
                    task.result()  # re-raise a lane's crash
        finally:
            for task in self._lane_tasks:
                task.cancel()
            await asyncio.gather(*self._lane_tasks, return_exceptions=True)
            self._lane_tasks.clear()

    def add_lane(self, lane: Lane) -> None:
        """A source found after start-up (a glob in source.paths matched a new file): read it too."""
        self.lanes.append(lane)
        if self._reading is not None:
            stopping, once = self._reading
            self._lane_tasks.add(asyncio.create_task(self._lane_loop(lane, stopping, once), name=f"read {lane.path}"))
            self._lane_added.set()

    async def _lane_loop(self, lane: Lane, stopping: asyncio.Event, once: bool) -> None:
        try:
            await self._read_lane(lane, stopping, once)
        finally:
            if lane.helper is not None:  # stopping: what it holds was never delivered (read again next run)
                lane.helper.close()
                lane.helper = None

    async def _read_lane(self, lane: Lane, stopping: asyncio.Event, once: bool) -> None:
        builder = lane.builder
        complete_cursor = self.keeper.position(lane.path)  # the end of the last line whose spans are all in `builder`
        paused_at: float | None = None  # when the reader began its coalescing pause, if it did
        while not stopping.is_set():
            deadline = builder.deadline()
            timeout = 0.0 if once else (None if deadline is None else max(deadline - time.monotonic(), 0.0))
            chunk = await lane.tailer.read(0.0 if lane.helper is not None else timeout)
            self.state.file_reachable = any(t.current is not None or t.draining for t in (x.tailer for x in self.lanes))
            if chunk is not None:
                opening = builder.opened_at is None
                complete_cursor = await self._consume(lane, chunk, complete_cursor)
                if opening and paused_at is not None and builder.opened_at is not None:
                    # Its lines may have been appended as the pause began: max_wait counts from then.
                    builder.opened_at = min(builder.opened_at, paused_at)
            elif lane.helper is not None:  # caught up: the lane maps its lines itself again
                complete_cursor = await self._stop_helper(lane, complete_cursor)
                continue
            paused_at = None
            if chunk is not None and not once and lane.helper is None and not builder.full:
                paused_at = await self._coalesce(lane, stopping)
            deadline = builder.deadline()
            if deadline is not None and (builder.full or time.monotonic() >= deadline or (once and chunk is None)):
                await self._flush_mapped(lane, complete_cursor)
            if once and chunk is None and lane.tailer.at_end:
                if builder.opened_at is not None:
                    await self._flush_mapped(lane, complete_cursor)
                return

    async def _coalesce(self, lane: Lane, stopping: asyncio.Event) -> float | None:
        """Following the file's end (caught up, rows arriving a few at a time): let rows
        accumulate for a moment instead of waking for every append, within the batch's
        max_wait (one wake-up per pause, not one per write: the CPU a live daemon spends).
        Returns when the pause began (None: no pause)."""
        if lane.tailer.backlog_bytes():
            return None  # more to read now
        began = time.monotonic()
        pause = min(READ_COALESCE, lane.builder.limits.max_wait / 2)
        deadline = lane.builder.deadline()
        if deadline is not None:
            pause = min(pause, deadline - began)
        if pause <= 0:
            return None
        try:
            await asyncio.wait_for(stopping.wait(), pause)
        except TimeoutError:
            pass
        return began

    async def _consume(self, lane: Lane, chunk: LineChunk, cursor: Cursor) -> Cursor:
        """Map a chunk's lines into the lane's batch (here, or by the helper process); returns the
        cursor after the last line whose spans are all in the batch."""
        consumed = chunk.lines[-1].end - chunk.lines[0].offset
        # Counted as backlog from the moment the tailer hands the lines over: _flush below may wait
        # a long time for a free export worker, and those bytes are not delivered meanwhile.
        lane.unsettled_bytes += consumed
        if lane.helper is None and lane.helper_pays(self.helper_min_backlog, chunk):
            await self._start_helper(lane)
        elif lane.helper is not None and not lane.helper_may_map(self.helper_min_backlog, chunk):
            cursor = await self._stop_helper(lane, cursor)
        if lane.helper is not None:
            await lane.helper.send(chunk, chunk.lines, consumed, lane.builder.limits, lane.mapper.hasher)
            while lane.helper.full:
                cursor = await self._apply_from_helper(lane, lane.helper, cursor)
            return cursor
        cutter = lane.cutter
        if cutter.limits is not lane.builder.limits:  # changed by SIGHUP
            cutter.limits = lane.builder.limits
        mapped = map_chunk(lane.mapper, cutter, chunk.lines, chunk.first_line_number, time.time_ns(), chunk.gap)
        return await self._add_mapped(lane, chunk, mapped, cursor, consumed)

    # -- the mapping helper (runtime/maphelper.py) ---------------------------------------------

    async def _start_helper(self, lane: Lane) -> None:
        assert lane.encoding is not None
        start = StartHelper(state_of(lane.mapper, lane.cutter), lane.encoding, lane.span_source, lane.builder.limits)
        try:
            lane.helper = await MapHelper.start(start)
        except OSError as exc:
            log.warning("cannot start the mapping helper process (%s): mapping in the daemon", exc)
            self.helper_min_backlog = None
            return
        log.debug("%s: %s unread, mapping in a helper process", lane.path, lane.tailer.backlog_bytes())

    async def _apply_from_helper(self, lane: Lane, helper: MapHelper, cursor: Cursor) -> Cursor:
        # A lost helper raises HelperLost: its mapping stage (chain, identity window) went with
        # it, so this run cannot map on exactly; the next resumes from the checkpoint.
        sent, mapped, events = await helper.receive()
        replay(events, lane.mapper.events)
        lane.mapper.chain.breaks = mapped.chain_breaks  # what the checkpoint's count reads meanwhile
        return await self._add_mapped(lane, sent.chunk, mapped, cursor, sent.consumed)

    async def _stop_helper(self, lane: Lane, cursor: Cursor) -> Cursor:
        """Apply what the helper still holds and take the mapping stage back."""
        helper = lane.helper
        assert helper is not None
        while helper.sent:
            cursor = await self._apply_from_helper(lane, helper, cursor)
        state = await helper.give_back()
        restore(lane.mapper, lane.cutter, state)
        lane.helper = None
        log.debug("%s: caught up, mapping in the daemon again", lane.path)
        return cursor

    async def _add_mapped(self, lane: Lane, chunk: LineChunk, mapped: MappedChunk, cursor: Cursor, consumed: int) -> Cursor:
        """Append a mapped chunk's spans to the lane's batch, handing the batch over at each cut.

        The hot loop of a catch-up: per span it only appends. A Cursor (a frozen dataclass, ~1 µs
        to build) is made only at a cut and at the end of the chunk."""
        builder, lines = lane.builder, chunk.lines
        spans, span_lines = mapped.spans, mapped.span_lines
        taken = 0
        for cut in mapped.cuts:
            builder.add_run(spans[taken : cut.spans], chunk.path, chunk.identity, lines, span_lines[taken : cut.spans])
            taken = cut.spans
            await self._flush(lane, self._cursor_at(cursor, chunk, cut))
        builder.add_run(spans[taken:], chunk.path, chunk.identity, lines, span_lines[taken:])
        if not spans:
            builder.touch()  # blank lines only: they still start the max_wait clock
        builder.source_bytes += consumed
        self.state.rows_read += len(lines)
        return cursor if mapped.end is None else self._cursor_at(cursor, chunk, mapped.end)

    @staticmethod
    def _cursor_at(cursor: Cursor, chunk: LineChunk, cut: Cut) -> Cursor:
        """The position after the first `cut.lines` lines of `chunk` (`cursor` before it)."""
        if not cut.lines:
            return cursor
        line = chunk.lines[cut.lines - 1]
        return Cursor(
            cursor.path,  # the source's name (a rotated version is still that source)
            chunk.identity,
            line.end,
            line.digest.hex(),
            line.length if line.data is not None else None,
            cut.chain_last_hash,
            cut.line_number,
            chain_recent=cut.chain_recent,
            chain_seen=cut.chain_seen,
            recent_digests=cut.identity_digests,
            version=chunk.version,
            line_index=chunk.first_index + cut.lines,
        )

    async def _flush_mapped(self, lane: Lane, end: Cursor) -> None:
        """Hand over the batch of every line mapped so far (max_wait, --once's end): the batch
        the mapping stage counts starts empty again (a helper's own count runs on: it only ever
        cuts the next batch earlier)."""
        lane.cutter.reset()
        await self._flush(lane, end)

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
                # (The tailer releases what is behind it once a checkpoint with it is durable.)
                self.keeper.advance(lane.path, frontier, lane.breaks_before + lane.mapper.chain.breaks)
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
