"""When the checkpoint is written: soon after the settled position moves, coalesced, and at exit."""

from __future__ import annotations

import asyncio
import logging

from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.runstate import RunState
from audit_otlp.state.checkpoint import Checkpoint, Cursor
from audit_otlp.state.store import CheckpointError, CheckpointStore

log = logging.getLogger(__name__)


class CheckpointKeeper:
    """Holds the latest settled position and writes it soon after it moves: at once when the last
    write is older than `interval`, else once the interval has passed (writes are coalesced, and
    a quiet daemon does not wake up at all). Also written at exit."""

    def __init__(
        self, store: CheckpointStore, initial: Checkpoint, interval: float, metrics: Metrics, state: RunState, enabled: bool
    ) -> None:
        self.store = store
        self.current = initial
        self.interval = interval
        self.metrics = metrics
        self.state = state
        self.enabled = enabled
        self._dirty = asyncio.Event()
        self._writing: asyncio.Future[None] | None = None

    def advance(self, frontier: Cursor | None) -> None:
        """A batch was settled: `frontier` is the new position if it moved; the counts are the
        run state's."""
        state = self.state
        self.current = self.current.with_cursor(
            frontier or self.current.cursor,
            delivered_spans=state.all_time_delivered(),
            chain_breaks=state.all_time_chain_breaks(),
            last_success_unix=state.last_success_unix or self.current.last_success_unix,
            last_error=state.last_error,
        )
        self._dirty.set()

    async def flush(self) -> bool:
        # One writer of the temp file at a time: a write the run task started (and that was
        # cancelled at shutdown) is waited for, never raced.
        if self._writing is not None and not self._writing.done():
            try:
                await asyncio.shield(self._writing)
            except CheckpointError:
                pass  # reported by its own caller; the state is still dirty
        if not (self.enabled and self._dirty.is_set()):
            return True
        snapshot = self.current
        self._dirty.clear()
        self._writing = asyncio.ensure_future(asyncio.to_thread(self.store.save, snapshot))
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
        return True

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            await self.flush()
            await asyncio.sleep(self.interval)  # coalesce: at most one write per interval
