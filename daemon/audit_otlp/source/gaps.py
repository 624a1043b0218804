"""When rows vanished before a version: report the gap once, and mark the first row after it.

A version that vanished while the daemon was stopped leaves its successor with a pending
question: were rows lost? Certainly, when undelivered bytes were known to be in it; else the
chain tells, at the successor's first row: a row that names the last row read as its parent
proves nothing is missing, one that names another row says rows are (`resume.is_gap`).
"""

from __future__ import annotations

from collections.abc import Callable

from audit_otlp.source.events import SourceEvents
from audit_otlp.source.followed import FollowedFile
from audit_otlp.source.resume import is_gap


class GapMarks:
    """Reports gaps through `events` and leaves the mark on the version whose first row is next."""

    def __init__(self, events: SourceEvents) -> None:
        self.events = events
        # Does a line's prev_hash name the last row read? (None: cannot tell.) Set by the mapping stage.
        self.links: Callable[[bytes], bool | None] | None = None

    def decide(self, followed: FollowedFile, first: bytes | None) -> None:
        """`followed` has a pending question (a version before it vanished): `first` is its first
        row (None: decide on what is certain only). The mapping stage has mapped every row before."""
        links = self.links(first) if self.links is not None and first is not None else None
        if is_gap(followed.gap_certain, links):
            self.report(followed, f"gone with rows not delivered: {followed.gap_if_new}")
        followed.gap_if_new = None

    def report(self, followed: FollowedFile, reason: str) -> None:
        """Rows before `followed`'s next row vanished unseen: said once, the row marked."""
        if followed.gap_before is None:
            followed.gap_before = reason
            self.events.resume_gap(reason)
