"""Where delivery stands on disk: the files a restarting daemon would read, in order, and the bytes
and rows each still holds (read-only; `audit-otlp status` only formats it).

The figures come from the daemon's own code, so they cannot disagree with it: `resume.locate`
finds every version the checkpoint holds (by identity, as a copy, or in the spool) and the files
queued after them, and each unresolved file skips the lines it repeats (`overlap_end` against
the `RecentLines` delivered and read before it), as the tailer does when the file becomes the
head of its queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from audit_otlp.source.followed import FollowedFile, open_followed, scan_lines
from audit_otlp.source.recent import RecentLines, overlap_end
from audit_otlp.source.resume import locate
from audit_otlp.source.spool import Spool
from audit_otlp.state.checkpoint import SourceState


@dataclass(frozen=True)
class QueuedFile:
    path: Path
    offset: int  # where reading it starts: the resume point, or just after the lines it repeats
    pending_bytes: int  # bytes from `offset` to its end (a partial last line included)
    pending_rows: int  # complete lines from `offset` on
    rotated: bool  # not the file at the path: a rotated file held open until it is drained
    spooled: bool = False  # read from the spool (the version vanished from disk)


@dataclass(frozen=True)
class Backlog:
    files: list[QueuedFile]  # in reading order; empty when there is nothing to read yet
    resume_gap: bool = False  # a restart now would report a gap (rows vanished unseen)
    gap: str | None = None  # what that gap is

    @property
    def pending_bytes(self) -> int:
        return sum(f.pending_bytes for f in self.files)

    @property
    def pending_rows(self) -> int:
        return sum(f.pending_rows for f in self.files)


def find_backlog(
    path: Path, pattern: str, resume: SourceState | None, max_line_bytes: int, spool: Spool | None = None
) -> Backlog:
    """What is left to deliver from `resume` on (blocking: it reads every pending line)."""
    recent = RecentLines()
    gap = None
    if resume is None or resume.says_nothing:
        try:
            files = [open_followed(path, max_line_bytes)]
        except OSError:
            return Backlog([])
    else:
        located = locate(path, pattern, resume, max_line_bytes, recent, spool)
        if located is None:
            return Backlog([])
        files, gap = located.files, located.gap
    try:
        return Backlog([_pending(f, path, max_line_bytes, recent) for f in files], gap is not None, gap)
    finally:
        for followed in files:
            followed.close()


def _pending(followed: FollowedFile, path: Path, max_line_bytes: int, recent: RecentLines) -> QueuedFile:
    if not followed.start_known:  # as `Tailer._resolve_start` does when the file becomes the head
        offset, _ = overlap_end(followed.fd, max_line_bytes, recent)
        followed.position_at(offset)
    rows = 0
    for line in scan_lines(followed.fd, max_line_bytes, followed.read_offset):
        recent.add(line.digest)  # what the tailer remembers of the lines it hands out
        rows += 1
    spooled = followed.spool is not None and followed.path.suffix == ".spool"
    return QueuedFile(followed.path, followed.read_offset, followed.pending_bytes(), rows, followed.path != path, spooled)
