"""Ordered acknowledgement: the checkpoint moves only over a prefix of settled batches.

Batches are registered in read order and may be settled out of order (several requests in
flight); the frontier is the end of the longest settled prefix, so an early 2xx for a later
batch never lets a crash skip the rows of an earlier one (Vector's OrderedFinalizer idea).
"""

from __future__ import annotations

from collections import deque

from audit_otlp.state.checkpoint import Cursor


class AckTracker:
    def __init__(self) -> None:
        self._next_seq = 0
        self._pending: deque[tuple[int, Cursor]] = deque()
        self._settled: set[int] = set()

    def register(self, end: Cursor) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._pending.append((seq, end))
        return seq

    def settle(self, seq: int) -> Cursor | None:
        """Mark batch `seq` delivered or dead-lettered; return the new frontier if it moved."""
        self._settled.add(seq)
        frontier: Cursor | None = None
        while self._pending and self._pending[0][0] in self._settled:
            done, frontier = self._pending.popleft()
            self._settled.discard(done)
        return frontier

    @property
    def unsettled(self) -> int:
        return len(self._pending)
