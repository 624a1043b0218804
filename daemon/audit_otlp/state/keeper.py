"""When the checkpoint is written: group commit (a write starts as soon as the position moves and
no write is in progress), and at exit.

With group commit a SIGKILL repeats at most the rows of the requests in flight plus those
acknowledged while the one write then in progress was on its way to disk (docs/delivery.md).
`checkpoint.interval` > 0 adds a pause after each write, for disks where an fsync per batch costs
too much. Each write takes the source's state from the tailer (`SourceView.snapshot`: the versions
held, the recent lines) at the moment it starts, so it is consistent with the position it
records; once it is durable the tailer may delete spool files it no longer names.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from dataclasses import replace
from typing import Protocol

from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.runstate import RunState
from audit_otlp.state.checkpoint import Checkpoint, Cursor, SourceState
from audit_otlp.state.store import CheckpointError, CheckpointStore

log = logging.getLogger(__name__)


class SourceView(Protocol):
    """What the checkpoint needs from a source (the tailer)."""

    def snapshot(self, position: Cursor) -> SourceState: ...
    def checkpoint_saved(self, state: SourceState) -> None: ...
    def drop_released_spool(self) -> bool: ...  # disk full: free what only an older checkpoint names


class CheckpointKeeper:
    """Holds the latest settled position and the counters, and writes them (see the module doc)."""

    def __init__(
        self, store: CheckpointStore, initial: Checkpoint, interval: float, metrics: Metrics, state: RunState, enabled: bool
    ) -> None:
        self.store = store
        self.current = initial
        self.interval = interval
        self.metrics = metrics
        self.state = state
        self.enabled = enabled
        self.views: dict[str, SourceView] = {}  # by source path, once each tailer is started
        self._dirty = asyncio.Event()
        self._writing: asyncio.Future[None] | None = None

    def source(self, path: str) -> SourceState:
        return self.current.source(path)

    def position(self, path: str) -> Cursor:
        return self.source(path).position

    def _set_source(self, path: str, source: SourceState) -> None:
        state = self.state
        self.current = self.current.with_source(
            path,
            source,
            delivered_spans=state.all_time_delivered(),
            last_success_unix=state.last_success_unix or self.current.last_success_unix,
            last_error=state.last_error,
        )
        self._dirty.set()

    def record_endpoint(self, endpoint: str) -> None:
        """Note where this run sends (status shows it); written with the next checkpoint, at once
        when it changed."""
        if endpoint != self.current.endpoint:
            self.current = replace(self.current, endpoint=endpoint)
            self._dirty.set()

    def started(self, path: str, position: Cursor, gap: str | None, view: SourceView) -> None:
        """A tailer opened its files: `position` is where this run starts (moved past a gap that
        was just found, whose row must be marked and which must never be reported again)."""
        self.views[path] = view
        source = replace(self.source(path), position=position)
        if gap is not None:
            source = replace(source, gap_pending=gap)
        self.current = self.current.with_source(path, source)
        if gap is not None or self.current.migrated_from is not None:
            self._dirty.set()

    def advance(self, path: str, frontier: Cursor | None, chain_breaks: int | None = None) -> None:
        """A batch of `path` was settled: `frontier` is its new position if it moved."""
        source = self.source(path)
        if frontier is not None and frontier != source.position:
            source = replace(source, position=frontier, gap_pending=None)  # the row after a gap is delivered
        if chain_breaks is not None:
            source = replace(source, chain_breaks=chain_breaks)
        self._set_source(path, source)

    def gap(self, path: str, reason: str) -> None:
        """A resume gap was reported: count it (status shows it, and the last one)."""
        source = self.source(path)
        self._set_source(path, replace(source, resume_gaps=source.resume_gaps + 1, last_gap=reason, last_gap_unix=time.time()))

    def spool_cut(self, path: str, cut_bytes: int, cut_lines: int) -> None:
        source = self.source(path)
        cut = replace(
            source, spool_cut_bytes=source.spool_cut_bytes + cut_bytes, spool_cut_lines=source.spool_cut_lines + cut_lines
        )
        self._set_source(path, cut)

    def nudge(self) -> None:
        """A source's state changed (a version was spooled): write soon, position or not."""
        self._dirty.set()

    def compose(self) -> Checkpoint:
        """The checkpoint to write now: the positions, and each tailer's versions at this moment."""
        checkpoint = self.current
        for path, view in self.views.items():
            source = checkpoint.source(path)
            filled = view.snapshot(source.position)
            source = replace(
                source,
                versions=filled.versions,
                position_index=filled.position_index,
                recent=filled.recent,
                released=filled.released,
            )
            checkpoint = checkpoint.with_source(path, source)
        return checkpoint

    async def flush(self) -> bool:
        # One writer of the temp file at a time: a write the run task started (and that was
        # cancelled at shutdown) is waited for, never raced.
        if self._writing is not None and not self._writing.done():
            try:
                await asyncio.shield(self._writing)
            except CheckpointError:
                pass  # reported by its own caller; the state is still dirty
        if not self.enabled:
            self._dirty.clear()  # a dry run writes nothing (and must not spin on a dirty flag)
            for path, view in self.views.items():  # ... but what it delivered is done with
                view.checkpoint_saved(self.current.source(path))
            return True
        if not self._dirty.is_set():
            return True
        snapshot = self.compose()
        self._dirty.clear()
        self._writing = asyncio.ensure_future(self._save(snapshot))
        try:
            await asyncio.shield(self._writing)
        except asyncio.CancelledError:
            self._dirty.set()  # the waiter was cancelled (shutdown): the final flush writes again
            raise
        except CheckpointError as exc:
            self._dirty.set()
            self.metrics.checkpoint_errors.inc()
            if self.state.checkpoint_error is None:
                log.error("%s; the previous checkpoint is intact, retrying", exc)
            self.state.checkpoint_error = str(exc)
            return False
        if self.state.checkpoint_error is not None:
            log.info("checkpoint writes work again")
        self.state.checkpoint_error = None
        for path, view in self.views.items():
            view.checkpoint_saved(snapshot.source(path))
        return True

    async def _save(self, snapshot: Checkpoint) -> None:
        """Write `snapshot`; on a full disk, once more after the sources deleted the spool files
        of versions already delivered (they are kept only until a checkpoint stops naming them,
        and on a disk that small they would keep the checkpoint from ever being written)."""
        try:
            await asyncio.to_thread(self.store.save, snapshot)
        except CheckpointError as exc:
            cause = exc.__cause__
            full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
            if not full or not [view for view in self.views.values() if view.drop_released_spool()]:
                raise
            await asyncio.to_thread(self.store.save, snapshot)

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            if not await self.flush():
                await asyncio.sleep(max(self.interval, 0.25))  # a failing disk: retry, without spinning
            elif self.interval:
                await asyncio.sleep(self.interval)
