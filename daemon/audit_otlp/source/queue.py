"""The open versions of the audit log and one read cycle on them (docs/design.md, "One cycle").

`files` are being read, oldest first, the path's file last: reading takes the head. A version read
to its end moves to `done`, where it stays open until delivery passes its end (`delivered`): until
then it may vanish (the producer's tail-rewrite deletes it) and must be spooled (`spool_vanished`).
A finished head is released at once when no writer can append to it any more (a copytruncate copy,
a spool file, link count 0); a renamed one only after `rotate_quiet`. `snapshot` is what the
checkpoint records: every version from the one holding the delivery position on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from audit_otlp.source.changes import PathChanges
from audit_otlp.source.events import SourceEvents
from audit_otlp.source.fileid import FileIdentity
from audit_otlp.source.followed import FollowedFile, last_line_boundary, open_followed
from audit_otlp.source.lines import Line
from audit_otlp.source.recent import RecentLines, overlap_end
from audit_otlp.source.resume import locate
from audit_otlp.source.siblings import rotated_siblings
from audit_otlp.source.spool import Spool, SpoolError, SpoolRecord
from audit_otlp.source.watch import FileWatcher
from audit_otlp.state.checkpoint import RECENT_DIGESTS, RELEASED_KEPT, Cursor, SourceState, VersionState

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
        self.files: list[FollowedFile] = []
        self.done: list[FollowedFile] = []  # read to their end, not yet delivered to their end
        self.recent = RecentLines(recent_limit)
        self.resume: SourceState | None = None  # searched for on the first open
        self.resume_tried = False
        self.start_at_end = False
        self.frontier = (0, 0)  # (version, offset) delivered up to
        self.trash: list[SpoolRecord] = []  # spools of released versions: deleted once a checkpoint is durable
        self.changes = PathChanges(path, rotated_glob, max_line_bytes, self._path_changed)
        self._serials = itertools.count(1)
        self._spool_failed: set[int] = set()  # versions whose spooling failed (said once)

    @property
    def held(self) -> list[FollowedFile]:
        """Every open version, oldest first (the path's file last), each numbered."""
        held = self.done + self.files
        for f in held:
            if not f.serial:
                f.serial = next(self._serials)
        return held

    def quiet_wait(self) -> float | None:
        """Seconds until the finished rotated head may be released; None when not waiting."""
        if len(self.files) < 2 or not self._may_grow(self.files[0]):
            return None
        return max(self.rotate_quiet - self.files[0].quiet_for(), 0.01)

    @staticmethod
    def _may_grow(f: FollowedFile) -> bool:
        """Could a writer still append to this rotated version? Not to a copy, a spool, or an
        inode no name points to (so no quiet-period wait for those: no self-made lag)."""
        if not f.appendable:
            return False
        try:
            return os.fstat(f.fd).st_nlink > 0
        except OSError:
            return False

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
                if self._may_grow(head) and head.quiet_for() < self.rotate_quiet:
                    return None
                chunk = await self._finish_head()
                if chunk is not None:
                    return chunk
                continue
            if not await self.check_path():
                return None

    def _emit(self, followed: FollowedFile, lines: list[Line]) -> LineChunk:
        if not followed.serial:
            followed.serial = next(self._serials)
        first_index = self.recent.next_index
        for line in lines:
            self.recent.add(line.digest)
        first = followed.lines_before + 1
        followed.lines_before += len(lines)
        gap, followed.gap_before = followed.gap_before, None
        if followed is not self.files[-1]:
            self._report_held()
        return LineChunk(followed.path, followed.identity, lines, first, followed.serial, first_index, gap)

    async def _resolve_start(self, followed: FollowedFile) -> None:
        """A newer file becomes the head: skip the lines it repeats (a tail-rewrite's overlap)."""
        offset, skipped = await asyncio.to_thread(overlap_end, followed.fd, self.max_line_bytes, self.recent)
        followed.position_at(offset)
        followed.lines_before = skipped
        followed.start_known = True
        if skipped:
            log.info("%s begins with %d lines already read (tail-rewrite); continuing at byte %d", followed.path, skipped, offset)
        elif followed.unread_at_truncation:
            self._gap(
                followed,
                f"{followed.path} was truncated with rows not yet read and no rotated copy matching {self.rotated_glob} holds them",
            )
        elif followed.gap_if_new is not None:
            self._gap(followed, f"gone with rows not delivered: {followed.gap_if_new}")
        followed.gap_if_new = None

    def _gap(self, followed: FollowedFile, reason: str) -> None:
        if followed.gap_before is None:
            followed.gap_before = reason
            self.events.resume_gap(reason)

    async def _finish_head(self) -> LineChunk | None:
        """The rotated head is read to its end: it waits in `done` until delivered, and its
        unterminated last line is handed out unless the next file continues it."""
        head, successor = self.files[0], self.files[1]
        if not successor.start_known:
            await self._resolve_start(successor)
        tail = head.unterminated_tail(successor)
        cut = head.spool is not None and head.read_offset <= head.spool.end < head.spool.size  # read from a cut spool
        if cut and head.spool is not None:
            self._gap(
                successor,
                f"the spool of {head.path} kept bytes {head.spool.start}-{head.spool.end}; "
                f"{head.spool.cut_bytes} bytes ({head.spool.lines_cut} lines) were past source.spool_max_bytes",
            )
        self.files.pop(0)
        self.done.append(head)
        log.info("read rotated file %s to its end", head.path)
        chunk = self._emit(head, [tail]) if tail is not None else None
        self.delivered(*self.frontier)
        return chunk

    # -- delivery and release -----------------------------------------------------------------

    def delivered(self, version: int, offset: int) -> None:
        """Delivery reached `offset` of `version`: versions before it (and it, when read and
        delivered to its end) are released: closed, never read again, their spool deleted once
        a checkpoint without them is durable."""
        self.frontier = (version, offset)
        held = self.held
        at = next((i for i, f in enumerate(held) if f.serial == version), None)
        if at is None:
            return
        for f in list(self.done):
            i = held.index(f)
            if i < at or (i == at and offset >= f.read_offset and not f.splitter.pending_bytes):
                self.done.remove(f)
                self._release(f)

    def _release(self, f: FollowedFile) -> None:
        f.close()
        self.changes.finished.append(f.identity)
        if f.spool is not None:
            self.trash.append(f.spool)
        log.info("released %s (read and delivered to its end)", f.path)
        self._report_held()

    def checkpoint_saved(self, state: SourceState) -> None:
        """A checkpoint is durable: spool files it no longer names can go."""
        if self.spool is None or not self.trash:
            return
        kept = {v.spool.name for v in state.versions if v.spool is not None}
        for record in [r for r in self.trash if r.name not in kept]:
            self.trash.remove(record)
            self.spool.remove(record)

    def snapshot(self, position: Cursor) -> SourceState:
        """The versions list and recent lines for a checkpoint whose position is `position`."""
        held = self.held
        at = next((i for i, f in enumerate(held) if f.serial == position.version), None)
        versions = tuple(_version_state(f) for f in (held[at:] if at is not None else held))
        released = tuple(list(self.changes.finished)[-RELEASED_KEPT:])
        recent = self.recent.before(position.line_index, RECENT_DIGESTS)
        return SourceState(position, versions, 0 if at is not None else None, recent, released)

    # -- vanished versions ------------------------------------------------------------------------

    async def spool_vanished(self) -> bool:
        """Copy the undelivered bytes of every held version that vanished from disk (link count
        0, or under neither the path nor a sibling name) into the spool. True if one was."""
        if self.spool is None:
            return False
        held = self.held
        at = next((i for i, f in enumerate(held) if f.serial == self.frontier[0]), 0)
        stats: list[tuple[int, FollowedFile, os.stat_result]] = []
        for i, f in enumerate(held):
            if f.spool is None and i >= at:
                try:
                    stats.append((i, f, os.fstat(f.fd)))
                except OSError:
                    continue
        # The path's file and every other version with a name need a look at the names (a glob):
        # only when some version is not the path's file any more.
        current = held[-1] if held else None
        needs_names = any(st.st_nlink > 0 and f is not current for _, f, st in stats)
        names = await asyncio.to_thread(_named_inodes, self.path, self.rotated_glob) if needs_names else set()
        spooled = False
        for i, f, st in stats:
            if st.st_nlink > 0 and (f is current or (st.st_dev, st.st_ino) in names):
                continue
            start = self.frontier[1] if i == at and f.serial == self.frontier[0] else (f.start_offset or 0)
            if start >= st.st_size:
                continue
            try:
                f.refresh_identity()
                record = await asyncio.to_thread(self.spool.keep, f.fd, f.identity, start)
            except SpoolError as exc:
                if f.serial not in self._spool_failed:
                    self._spool_failed.add(f.serial)
                    self.events.spool_failed(f.path, str(exc))
                continue
            f.spool, f.appendable = record, False
            self._spool_failed.discard(f.serial)
            self.events.spooled(f.path, record)
            spooled = True
        return spooled

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
            self.files = located.files
            self.changes.finished.extend(located.older)
            for followed in self.files:
                if followed.spool is None:
                    self.watcher.follow(followed.path)
            self._report_held()
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
        self.files = [followed]

    async def check_path(self) -> bool:
        """Has the path moved on from the newest file we hold? True if something changed."""
        if not self.files:
            await self.open_initial()
            return bool(self.files)
        return await self.changes.check_path(self.files)

    def _path_changed(self, kind: str) -> None:
        """`changes` updated the queue: follow the new file and say so."""
        if kind == "rename":
            self.watcher.follow(self.path)
        self.events.rotation(kind, self.path)
        self._report_held()

    def _report_held(self) -> None:
        rotated = self.done + self.files[:-1]
        self.events.held_files(len(rotated), sum(f.pending_bytes() for f in rotated))


def _version_state(f: FollowedFile) -> VersionState:
    try:
        st = os.fstat(f.fd)
        size, mtime_ns = max(st.st_size, f.read_offset), st.st_mtime_ns
    except OSError:
        size, mtime_ns = f.read_offset, 0
    start = f.start_offset if f.start_offset is not None else (0 if f.start_known else None)
    return VersionState(f.identity, str(f.path), size, mtime_ns, start if f.start_known else None, f.spool)


def _named_inodes(path: Path, pattern: str) -> set[tuple[int, int]]:
    """(device, inode) of the path's file and of every sibling name (blocking)."""
    found = {(s.dev, s.ino) for s in rotated_siblings(pattern, path)}
    try:
        st = os.stat(path)
        found.add((st.st_dev, st.st_ino))
    except OSError:
        pass
    return found
