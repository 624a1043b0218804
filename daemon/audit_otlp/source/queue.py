"""The versions of the audit log being read, and one read cycle on them (docs/design.md, "One cycle").

`files` are being read, oldest first, the path's file last: reading takes the head. A head read to
its end is finished (`held.HeldVersions`: kept open until delivered) at once when no writer can
append to it any more (a copytruncate copy, a spool file, link count 0), a renamed one only after
`rotate_quiet`. `changes.py` decides what a change at the path means; `resume.py` where a restart
continues.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from audit_otlp.source.changes import PathChanges
from audit_otlp.source.events import SourceEvents
from audit_otlp.source.fileid import FileIdentity
from audit_otlp.source.followed import FollowedFile, first_line, last_line_boundary, open_followed
from audit_otlp.source.gaps import GapMarks
from audit_otlp.source.held import HeldVersions
from audit_otlp.source.lines import Line
from audit_otlp.source.recent import RecentLines, overlap_end
from audit_otlp.source.resume import locate
from audit_otlp.source.spool import Spool
from audit_otlp.source.watch import FileWatcher
from audit_otlp.state.checkpoint import SourceState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LineChunk:
    path: Path
    identity: FileIdentity
    lines: list[Line]
    first_line_number: int  # 1-based number of the first line in its file (0 when unknown)
    version: int = 0  # the queue's number for the file version
    first_index: int = 0  # lines handed out before the first one (all versions, this run)
    gap: str | None = None  # the rows before the first line vanished unseen: mark its row


class FileQueue:
    def __init__(
        self,
        path: Path,
        max_line_bytes: int,
        rotated_glob: str,
        events: SourceEvents,
        watcher: FileWatcher,
        rotate_quiet: float,
        spool: Spool | None = None,
        recent_limit: int = 4096,
    ) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.rotated_glob = rotated_glob
        self.events = events
        self.watcher = watcher
        self.rotate_quiet = rotate_quiet
        self.spool = spool
        self.files: list[FollowedFile] = []  # the list object is shared with `held`: never replaced
        self.recent = RecentLines(recent_limit)
        self.resume: SourceState | None = None  # searched for on the first open
        self.resume_tried = False
        self.at_position = False  # the first file starts at the checkpoint's position (not moved)
        self.start_at_end = False
        self.changes = PathChanges(path, rotated_glob, max_line_bytes, self._path_changed)
        self.held = HeldVersions(path, rotated_glob, self.files, self.changes.finished, events, spool)
        self.changes.done = self.held.done  # the same list: what is read to its end is held too
        self.gaps = GapMarks(events)

    def quiet_wait(self) -> float | None:
        """Seconds until the finished rotated head may be released; None when not waiting."""
        if len(self.files) < 2 or not self.files[0].may_grow():
            return None
        return max(self.rotate_quiet - self.files[0].quiet_for(), 0.01)

    # -- one read cycle --------------------------------------------------------------------------

    async def read_once(self) -> LineChunk | None:
        """One read cycle; None when there is nothing to read now."""
        while True:
            if not self.files:
                await self.open_initial()
                if not self.files:
                    return None
            head = self.files[0]
            if await self.changes.rewritten_unseen(self.files, head):
                continue
            if not head.start_known:
                if not head.unchanged():  # rewritten while it waited its turn
                    await self.changes.truncated(self.files, 0)
                    continue
                await self._resolve_start(head)
            data = await head.read_chunk()
            if data:
                if not head.unchanged():
                    await self.changes.truncated(self.files, 0)
                    continue
                lines = head.accept(data)
                if lines:
                    return self._emit(head, lines)
                continue  # only part of a long line so far: keep reading
            if len(self.files) > 1:
                if not head.unchanged():  # truncated after it was rotated away (copytruncate then rename)
                    await self.changes.truncated(self.files, 0)
                    continue
                if head.may_grow() and head.quiet_for() < self.rotate_quiet:
                    return None
                chunk = await self._finish_head()
                if chunk is not None:
                    return chunk
                continue
            if not await self.check_path():
                return None

    def _emit(self, followed: FollowedFile, lines: list[Line]) -> LineChunk:
        self.held.number(followed)
        if followed.gap_if_new is not None:  # a version before it vanished: its first row decides
            self.gaps.decide(followed, lines[0].data)
        first_index = self.recent.next_index
        for line in lines:
            self.recent.add(line.digest)
        first = followed.lines_before + 1
        followed.lines_before += len(lines)
        gap, followed.gap_before = followed.gap_before, None
        if followed is not self.files[-1]:
            self.report_held()
        return LineChunk(followed.path, followed.identity, lines, first, followed.serial, first_index, gap)

    async def _resolve_start(self, followed: FollowedFile) -> None:
        """A newer file becomes the head: skip the lines it repeats (a tail-rewrite's overlap).
        A loss before it, certain or not, is decided by its first row (`_emit`): a vanished
        version's rows may all begin it (the producer's tail-rewrite of a short file), and a row
        naming the last row read as its parent proves nothing is missing."""
        offset, skipped = await asyncio.to_thread(overlap_end, followed.fd, self.max_line_bytes, self.recent)
        followed.position_at(offset)
        followed.lines_before = skipped
        followed.start_known = True
        if skipped:
            log.info("%s begins with %d lines already read (tail-rewrite); continuing at byte %d", followed.path, skipped, offset)
            followed.gap_if_new = None  # it repeats the last lines read: nothing vanished
        elif followed.gap_if_new is not None and followed.gap_certain:
            # Nothing in it yet: the vanished rows are not at its start, so they are lost (say it now).
            if await asyncio.to_thread(first_line, followed.fd, self.max_line_bytes, offset) is None:
                self.gaps.decide(followed, None)

    async def _finish_head(self) -> LineChunk | None:
        """The rotated head is read to its end: it waits in `done` until delivered, and its
        unterminated last line is handed out unless the next file continues it."""
        head, successor = self.files[0], self.files[1]
        if not successor.start_known and successor.unchanged():
            # (One truncated since it was opened is left unresolved: as the head, its truncation
            # is handled first, and its copy resolved against what was read.)
            await self._resolve_start(successor)
        tail = head.unterminated_tail(successor)
        cut = head.spool is not None and head.read_offset <= head.spool.end < head.spool.size  # read from a cut spool
        if cut and head.spool is not None:
            self.gaps.report(
                successor,
                f"the spool of {head.path} kept bytes {head.spool.start}-{head.spool.end}; "
                f"{head.spool.cut_bytes} bytes ({head.spool.lines_cut} lines) were past source.spool_max_bytes",
            )
        if head.gap_if_new is not None and successor.gap_if_new is None:  # undecided, no row: the next one decides
            successor.gap_if_new, successor.gap_certain = head.gap_if_new, head.gap_certain
        self.files.pop(0)
        log.info("read rotated file %s to its end", head.path)
        chunk = self._emit(head, [tail]) if tail is not None else None
        self.held.finish(head)
        self.report_held()
        return chunk

    # -- opening and the path -------------------------------------------------------------------

    async def open_initial(self) -> None:
        """Open the file(s) to start with: the resume point's chain, or the path's file."""
        if self.resume is not None:
            if self.resume_tried and not os.path.exists(self.path):
                return  # already looked everywhere; wait for the file to appear
            self.resume_tried = True
            located = await asyncio.to_thread(
                locate, self.path, self.rotated_glob, self.resume, self.max_line_bytes, self.recent, self.spool
            )
            if located is None:
                return
            self.resume = None
            if located.gap is not None and not located.files[0].gap_reported:
                self.events.resume_gap(located.gap)
            else:
                log.info("resuming at %s", located.how)
            self.files[:] = located.files
            self.at_position = located.at_position
            self.changes.finished.extend(located.older)
            for followed in self.files:
                if followed.spool is None:
                    self.watcher.follow(followed.path)
            self.report_held()
            return
        try:
            followed = open_followed(self.path, self.max_line_bytes)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot open %s: %s", self.path, exc)
            return
        self.watcher.follow(self.path)
        if self.start_at_end:
            followed.position_at(last_line_boundary(followed.fd))
            self.start_at_end = False
        self.files[:] = [followed]

    async def check_path(self) -> bool:
        """Has the path moved on from the newest file we hold? True if something changed."""
        if not self.files:
            await self.open_initial()
            return bool(self.files)
        return await self.changes.check_path(self.files)

    async def _path_changed(self, kind: str) -> None:
        """`changes` updated the queue: follow the new file, spool the undelivered bytes of every
        version the change made vanish, and only then say so. Whoever noticed (the reader or the
        monitor, under the tailer's lock), a rotation reported (metric, log) is one whose vanished
        rows survive a SIGKILL that follows the report."""
        if kind == "rename":
            self.watcher.follow(self.path)
        await self.held.spool_vanished()
        self.events.rotation(kind, self.path)
        self.report_held()

    def report_held(self) -> None:
        rotated = self.held.done + self.files[:-1]
        self.events.held_files(len(rotated), sum(f.pending_bytes() for f in rotated))
