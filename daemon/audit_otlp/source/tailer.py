"""Follow the audit log across rotations and hand out complete lines in file order.

A queue of open, read-only handles (`queue.FileQueue`): rotated-away files still to be finished
or delivered, copies holding rows a copytruncate cut off, and last the file at the path. A
monitor task looks at the path (inotify wake-ups, polling as the source of truth) even while the
reader is held back by a collector outage, so every version is opened while it still exists, and
the undelivered bytes of a version that vanishes are spooled at the next look (an inotify wake-up,
at most a poll interval) by whichever of the reader and the monitor notices, before the rotation is reported.

`FileQueue.read_once()` is steps 1-3 and 9-10 of the cycle in docs/design.md ("One cycle");
`changes.py` decides what a change at the path means ("Rotation cases"); `resume.py` where a
restart continues.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from audit_otlp.source.changes import coarse_now_ns
from audit_otlp.source.events import LogOnlyEvents, SourceEvents
from audit_otlp.source.followed import FollowedFile
from audit_otlp.source.queue import FileQueue, LineChunk
from audit_otlp.source.spool import Spool
from audit_otlp.source.watch import FileWatcher
from audit_otlp.state.checkpoint import Cursor, SourceState

log = logging.getLogger(__name__)

MONITOR_SETTLE = 0.1  # seconds between two looks that only appends woke (a rotation: at once)

__all__ = ["LineChunk", "Tailer"]


class Tailer:
    """The source's public face: start (resume or the path's file), read with a timeout, a
    monitor task that looks at the path even while the reader is held back, and what delivery
    tells it (`delivered`) and the checkpoint asks of it (`snapshot`, `checkpoint_saved`)."""

    def __init__(
        self,
        path: Path,
        *,
        max_line_bytes: int,
        poll_interval: float = 1.0,
        rotated_glob: str | None = None,
        events: SourceEvents | None = None,
        rotate_quiet: float | None = None,
        spool: Spool | None = None,
        recent_limit: int = 4096,
    ) -> None:
        self.path = path
        self.watcher = FileWatcher(path, poll_interval)
        # A writer that opened the file before the rename may still append to it: a rotated file
        # is released once it is at its end and has not been written for this long.
        quiet = min(poll_interval, 1.0) if rotate_quiet is None else rotate_quiet
        self.events = events or LogOnlyEvents()
        self.queue = FileQueue(
            path, max_line_bytes, rotated_glob or f"{path}.*", self.events, self.watcher, quiet, spool, recent_limit
        )
        self.at_end = False  # the last read found nothing anywhere (for --once)
        self._lock = asyncio.Lock()  # the reader and the monitor take turns on the queue
        self._monitor_task: asyncio.Task[None] | None = None

    @property
    def current(self) -> FollowedFile | None:
        return self.queue.files[-1] if self.queue.files else None

    @property
    def draining(self) -> list[FollowedFile]:
        """Rotated files held open until they are read and delivered to their end."""
        return self.queue.held.done + self.queue.files[:-1]

    async def start(self, resume: SourceState | None, start_at: str = "beginning") -> None:
        self.watcher.start()
        if resume is not None and not resume.says_nothing:
            self.queue.resume = resume
            self.queue.changes.finished.extend(resume.released)
        self.queue.start_at_end = resume is None and start_at == "end"
        async with self._lock:
            await self.queue.open_initial()
            self._start_frontier()
        self.queue.changes.seen_at = coarse_now_ns()
        self._monitor_task = asyncio.create_task(self._monitor(), name="tailer-monitor")

    def _start_frontier(self) -> None:
        """Delivery stands at the start of the first file to read, as the checkpoint on disk says."""
        if self.queue.files:
            first = self.queue.held.all()[0]
            self.queue.held.durable = (first.serial, first.read_offset)

    def start_position(self, position: Cursor) -> tuple[Cursor, str | None]:
        """The checkpoint's position as this run knows it (its version's number, the recent-lines
        index) and, when rows before the first file to read vanished, the gap's reason (the
        position then moves to that file's start)."""
        queue = self.queue
        if not queue.files:
            return position, None
        first = queue.held.all()[0]
        gap = first.gap_before
        index = queue.recent.next_index
        if queue.at_position and gap is None:
            return replace(position, version=first.serial, line_index=index), None
        # Reading starts elsewhere: the next version after a finished or vanished one, or the
        # line found by its hash. The position moves there (a gap also forgets the chain).
        chain = None if gap is not None else position.chain_last_hash
        moved = replace(
            position,
            identity=first.identity,
            offset=first.read_offset,
            last_line_sha256=None,
            last_line_length=None,
            chain_last_hash=chain,
            line_number=first.lines_before,
            chain_recent=() if gap is not None else position.chain_recent,
            chain_seen=0 if gap is not None else position.chain_seen,
            version=first.serial,
            line_index=index,
        )
        return moved, gap

    async def close(self) -> None:
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            await asyncio.gather(self._monitor_task, return_exceptions=True)
            self._monitor_task = None
        self.watcher.close()
        for followed in self.queue.held.all():
            followed.close()
        self.queue.files.clear()
        self.queue.held.done.clear()

    async def poll(self) -> None:
        """One monitor cycle: look at the path now (tests call this instead of waiting)."""
        async with self._lock:
            await self._look()

    async def _look(self) -> None:
        was_empty = not self.queue.files
        await self.queue.check_path()  # a change it finds spools what it made vanish before it is reported
        if was_empty:
            self._start_frontier()
        # Versions can vanish with no change at the path to report (deleted, nothing new yet; a
        # rotated sibling deleted), and a spool that failed is retried here.
        if await self.queue.held.spool_vanished():
            self.queue.report_held()

    async def _monitor(self) -> None:
        """Notice rotations while the reader is busy or blocked (collector down): open each new
        version of the file, capture a copytruncate's copy while they still exist, and spool the
        undelivered bytes of a version that vanished."""
        channel = self.watcher.channel()
        while True:
            await self.watcher.wait(None, channel)
            async with self._lock:
                try:
                    await self._look()
                except OSError as exc:
                    log.warning("cannot check %s: %s", self.path, exc)
            # Each append wakes it (200 looks a second for a hook writing every 5 ms, most of a
            # followed file's CPU): after mere writes it looks again MONITOR_SETTLE later at the
            # soonest; a rename, a new file or a deletion is looked at at once.
            await self.watcher.settle(MONITOR_SETTLE)

    async def read(self, timeout: float | None) -> LineChunk | None:
        """The next lines in file order, or None if none arrived within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            async with self._lock:
                was_empty = not self.queue.files
                chunk = await self.queue.read_once()
                if was_empty and self.queue.files:
                    self._start_frontier()
            if chunk is not None:
                self.at_end = False
                return chunk
            quiet_wait = self.queue.quiet_wait()
            self.at_end = quiet_wait is None
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                if quiet_wait is not None:  # not at the end yet: no spinning while it settles
                    await asyncio.sleep(min(quiet_wait, 0.05))
                return None
            if quiet_wait is not None:
                remaining = quiet_wait if remaining is None else min(remaining, quiet_wait)
            await self.watcher.wait(remaining)

    # -- what delivery and the checkpoint need ---------------------------------------------------

    def snapshot(self, position: Cursor) -> SourceState:
        return self.queue.held.snapshot(position, self.queue.recent)

    def checkpoint_saved(self, state: SourceState) -> None:
        """A checkpoint is durable: release what its position is past (what a restart would not read)."""
        self.queue.held.checkpoint_saved(state)
        self.queue.report_held()

    def drop_released_spool(self) -> bool:
        return self.queue.held.drop_trash()

    def backlog_bytes(self) -> int:
        """Bytes present in the followed files that have not been read yet."""
        return sum(f.pending_bytes() for f in self.queue.files)
