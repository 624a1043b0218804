"""Follow the audit log across rotations and hand out complete lines in file order.

The tailer keeps a queue of open, read-only handles, oldest first: rotated-away files still to be
finished, rotated copies holding rows a copytruncate cut off, and last the file at the path.
Reading always takes the head of the queue. A monitor task watches the path (inotify wake-ups,
polling as the source of truth) even while the reader is blocked behind a collector outage, so
every version of the file is opened while it still exists and the backlog survives rotations.

One cycle of `Tailer.read()` (see docs/rotation.md for the whole story):
1. The head file may begin with lines already read (a tail-rewrite): skip the leading lines whose
   digests are among the recently read ones, once, when it becomes the head.
2. Read the head from its offset in large chunks; before using a chunk, check the file still
   holds what was read (fingerprint of its first bytes, the bytes just before the offset): if
   not, it was truncated under us (step 4).
3. The head is at its end and a newer file is queued: once the head has been quiet for
   `rotate_quiet` seconds, release it (a held partial last line is handed out unless the newer
   file continues it) and go on with the next file.
4. The path's file is at its end: stat the path. A new inode (rename, tail-rewrite, delete and
   recreate, symlink switch) is opened and queued. The same inode with a smaller size or other
   first bytes was truncated: the rows between our offset and the truncation are taken from the
   rotated sibling with the same fingerprint and the same bytes before the offset (copytruncate),
   and the truncated file is read again from its start.
5. Nothing to do: wait for an inotify wake-up or the poll interval, whichever is first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from audit_otlp.source.fileid import FileIdentity, identify_fd
from audit_otlp.source.followed import (
    MARKER_BYTES,
    FollowedFile,
    RecentLines,
    last_line_boundary,
    open_followed,
    overlap_end,
)
from audit_otlp.source.lines import Line, LineSplitter
from audit_otlp.source.resume import locate
from audit_otlp.source.versions import VersionFinder
from audit_otlp.source.watch import FileWatcher

log = logging.getLogger(__name__)

CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # the clock file times are taken from


def coarse_now_ns() -> int:
    """Now, as the kernel would stamp a file written now (its coarse clock lags time.time())."""
    try:
        return time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
    except OSError:
        return time.time_ns() - 20_000_000


class SourceEvents(Protocol):
    """What the tailer reports; the app turns these into log lines and metrics."""

    def rotation(self, kind: str, path: Path) -> None: ...
    def resume_gap(self, reason: str) -> None: ...
    def held_files(self, count: int, pending_bytes: int) -> None: ...


class LogOnlyEvents:
    def rotation(self, kind: str, path: Path) -> None:
        log.info("rotation detected (%s): %s", kind, path)

    def resume_gap(self, reason: str) -> None:
        log.error("RESUME GAP: %s; reading the current file from its beginning", reason)

    def held_files(self, count: int, pending_bytes: int) -> None:
        pass


@dataclass(frozen=True)
class ResumePoint:
    """Where the checkpoint says to continue: just after a line of a known file."""

    identity: FileIdentity | None
    offset: int
    last_line_sha256: str | None = None  # hex digest of the line ending at `offset`
    last_line_length: int | None = None


@dataclass(frozen=True)
class LineChunk:
    path: Path
    identity: FileIdentity
    lines: list[Line]
    first_line_number: int  # 1-based number of the first line in its file (0 when unknown)


class Tailer:
    def __init__(
        self,
        path: Path,
        *,
        max_line_bytes: int,
        poll_interval: float = 1.0,
        rotated_glob: str | None = None,
        events: SourceEvents | None = None,
        rotate_quiet: float | None = None,
    ) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.rotated_glob = rotated_glob or f"{path}.*"
        self.events: SourceEvents = events or LogOnlyEvents()
        self.poll_interval = poll_interval
        self.watcher = FileWatcher(path, poll_interval)
        # A writer that opened the file before the rename may still append to it: a rotated file
        # is released once it is at its end and has not been written for this long.
        self.rotate_quiet = min(poll_interval, 1.0) if rotate_quiet is None else rotate_quiet
        self.files: list[FollowedFile] = []  # oldest first; the last one is the path's file
        self.recent = RecentLines()
        self.at_end = False  # the last read found nothing anywhere (for --once)
        self._resume: ResumePoint | None = None
        self._resume_tried = False
        self._start_at_end = False
        self._lock = asyncio.Lock()  # the reader and the monitor take turns on the queue
        self._monitor_task: asyncio.Task[None] | None = None
        self._path_seen_at = coarse_now_ns()  # when the path last showed the newest file we hold
        self.versions = VersionFinder(path, self.rotated_glob, max_line_bytes)

    @property
    def current(self) -> FollowedFile | None:
        return self.files[-1] if self.files else None

    @property
    def draining(self) -> list[FollowedFile]:
        """Rotated files held open until they are read to their end."""
        return self.files[:-1]

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, resume: ResumePoint | None, start_at: str = "beginning") -> None:
        self.watcher.start()
        if resume is not None and (resume.offset or resume.last_line_sha256 or resume.identity):
            self._resume = resume
        self._start_at_end = resume is None and start_at == "end"
        async with self._lock:
            await self._open_initial()
        self._path_seen_at = coarse_now_ns()
        self._monitor_task = asyncio.create_task(self._monitor(), name="tailer-monitor")

    async def close(self) -> None:
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            await asyncio.gather(self._monitor_task, return_exceptions=True)
            self._monitor_task = None
        self.watcher.close()
        for followed in self.files:
            followed.close()
        self.files.clear()

    async def poll(self) -> None:
        """One monitor cycle: look at the path now (tests call this instead of waiting)."""
        async with self._lock:
            await self._check_path()

    async def _monitor(self) -> None:
        """Notice rotations while the reader is busy or blocked (collector down): open each new
        version of the file and capture a copytruncate's copy while they still exist."""
        channel = self.watcher.channel()
        while True:
            await self.watcher.wait(None, channel)
            async with self._lock:
                try:
                    await self._check_path()
                except OSError as exc:
                    log.warning("cannot check %s: %s", self.path, exc)

    # -- reading -------------------------------------------------------------------------------

    async def read(self, timeout: float | None) -> LineChunk | None:
        """The next lines in file order, or None if none arrived within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            async with self._lock:
                chunk = await self._read_once()
            if chunk is not None:
                self.at_end = False
                return chunk
            quiet_wait = self._quiet_wait()
            self.at_end = quiet_wait is None
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                if quiet_wait is not None:  # not at the end yet: no spinning while it settles
                    await asyncio.sleep(min(quiet_wait, 0.05))
                return None
            if quiet_wait is not None:
                remaining = quiet_wait if remaining is None else min(remaining, quiet_wait)
            await self.watcher.wait(remaining)

    def _quiet_wait(self) -> float | None:
        """Seconds until the finished rotated head may be released; None when not waiting."""
        if len(self.files) < 2:
            return None
        return max(self.rotate_quiet - self.files[0].quiet_for(), 0.01)

    async def _read_once(self) -> LineChunk | None:
        while True:
            if not self.files:
                await self._open_initial()
                if not self.files:
                    return None
            head = self.files[0]
            if await self._rewritten_unseen(head):
                continue
            if not head.start_known:
                if not head.unchanged():  # rewritten while it waited its turn
                    await self._truncated(0)
                    continue
                await self._resolve_start(head)
            data = await head.read_chunk()
            if data:
                if not head.unchanged():
                    await self._truncated(0)
                    continue
                lines = head.accept(data)
                if lines:
                    return self._emit(head, lines)
                continue  # only part of a long line so far: keep reading
            if len(self.files) > 1:
                if not head.unchanged():  # truncated after it was rotated away (copytruncate then rename)
                    await self._truncated(0)
                    continue
                if head.quiet_for() < self.rotate_quiet:
                    return None
                chunk = await self._release_head()
                if chunk is not None:
                    return chunk
                continue
            if not await self._check_path():
                return None

    def _emit(self, followed: FollowedFile, lines: list[Line]) -> LineChunk:
        for line in lines:
            self.recent.add(line.digest)
        first = followed.lines_before + 1
        followed.lines_before += len(lines)
        if followed is not self.current:
            self._report_held()
        return LineChunk(followed.path, followed.identity, lines, first)

    async def _resolve_start(self, followed: FollowedFile) -> None:
        """A newer file becomes the head: skip the lines it repeats (a tail-rewrite's overlap)."""
        offset, skipped = await asyncio.to_thread(overlap_end, followed.fd, self.max_line_bytes, self.recent)
        _position(followed, offset, self.max_line_bytes)
        followed.lines_before = skipped
        followed.start_known = True
        if skipped:
            log.info("%s begins with %d lines already read (tail-rewrite); continuing at byte %d",
                     followed.path, skipped, offset)
        elif followed.unread_at_truncation:
            self.events.resume_gap(f"{followed.path} was truncated with rows not yet read and no rotated copy "
                                   f"matching {self.rotated_glob} holds them")

    async def _release_head(self) -> LineChunk | None:
        """The rotated head is finished: close it and hand out its unterminated last line, if
        any, unless the next file continues that line (a tail-rewrite copies it over)."""
        head, successor = self.files[0], self.files[1]
        if not successor.start_known:
            await self._resolve_start(successor)
        tail: Line | None = None
        if head.splitter.pending_bytes:
            held = head.splitter.pending_data()
            continued = held is not None and os.pread(successor.fd, len(held), successor.read_offset) == held
            if not continued:
                tail = head.splitter.take_unterminated()
        self.files.pop(0)
        head.close()
        self.versions.finished.append(head.identity)
        log.info("released rotated file %s (read to its end)", head.path)
        self._report_held()
        return self._emit(head, [tail]) if tail is not None else None

    # -- rotation ------------------------------------------------------------------------------

    async def _open_initial(self) -> None:
        """Open the file(s) to start with: the resume point's chain, or the path's file."""
        if self._resume is not None:
            if self._resume_tried and not os.path.exists(self.path):
                return  # already looked everywhere; wait for the file to appear
            self._resume_tried = True
            located = await asyncio.to_thread(
                locate, self.path, self.rotated_glob, self._resume, self.max_line_bytes, self.recent)
            if located is None:
                return
            self._resume = None
            if located.gap is not None:
                self.events.resume_gap(located.gap)
            else:
                log.info("resuming at %s", located.how)
            self.files = located.files
            self.versions.finished.extend(located.older)
            for followed in self.files:
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
        if self._start_at_end:
            _position(followed, last_line_boundary(followed.fd), self.max_line_bytes)
            self._start_at_end = False
        self.files = [followed]

    async def _check_path(self) -> bool:
        """Has the path moved on from the newest file we hold? True if something changed."""
        if not self.files:
            await self._open_initial()
            return bool(self.files)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed or deleted, nothing new yet: keep the handle, keep waiting
        except OSError as exc:
            log.warning("cannot stat %s: %s", self.path, exc)
            return False
        newest = self.files[-1]
        looked_at = coarse_now_ns()
        if newest.identity.same_inode(st):
            if not newest.unchanged():
                await self._truncated(len(self.files) - 1)
                return True
            await self._rewritten_unseen(newest)
            newest.refresh_identity()
            self._path_seen_at = looked_at
            return False
        if any(f.identity.same_inode(st) for f in self.files):
            return False  # the path points back at a file we already hold
        try:
            followed = open_followed(self.path, self.max_line_bytes)
        except OSError:
            return False  # gone again between stat and open: the next look will tell
        if any(f.identity.dev == followed.identity.dev and f.identity.ino == followed.identity.ino for f in self.files):
            followed.close()
            return False
        followed.start_known = False
        missed = await asyncio.to_thread(self.versions.missed, [*self.files, followed], self._path_seen_at)
        self.files.extend([*missed, followed])
        self._path_seen_at = looked_at
        self.watcher.follow(self.path)
        self.events.rotation("rename", self.path)
        self._report_held()
        return True

    async def _rewritten_unseen(self, followed: FollowedFile) -> bool:
        """A file we only ever saw empty was written since, and maybe copied and truncated again
        (copytruncate) before we looked: no fingerprint can find that copy, its modification
        time can. True if copies were queued before it."""
        if followed.identity.fingerprint_len or not followed.untouched:
            return False
        mtime_ns = os.fstat(followed.fd).st_mtime_ns
        if mtime_ns == followed.seen_mtime_ns:
            return False
        followed.seen_mtime_ns = mtime_ns
        missed = await asyncio.to_thread(self.versions.missed, [*self.files, followed], self._path_seen_at)
        if not missed:
            return False
        index = self.files.index(followed)
        self.files[index:index] = missed
        followed.start_known = False
        self.events.rotation("copytruncate", self.path)
        self._report_held()
        return True

    async def _truncated(self, index: int) -> None:
        """files[index] was truncated (and maybe written again) under us: recover the rows we
        had not read from its rotated copy, then read it again from its start. Versions it had
        between two looks (truncated more than once) are queued in between."""
        old = self.files[index]
        fresh = FollowedFile(old.path, old.fd, identify_fd(old.fd), LineSplitter(self.max_line_bytes), 0,
                             start_known=False)
        fresh.seen_size = fresh.identity.fingerprint_len
        held = {(f.identity.dev, f.identity.ino) for f in self.files}
        copy = await asyncio.to_thread(self.versions.copy_of, old, held)
        if copy is not None:
            copy.splitter, copy.read_offset, copy.marker = old.splitter, old.read_offset, old.marker
            copy.start_known, copy.lines_before = old.start_known, old.lines_before
            self.files[index] = copy
            index += 1
        else:
            self.files.pop(index)
        missed = await asyncio.to_thread(self.versions.missed, [*self.files, fresh], self._path_seen_at)
        self.files[index:index] = [*missed, fresh]
        if copy is not None or missed:
            self.events.rotation("copytruncate", self.path)
            log.info("%s was truncated; reading %s first", old.path,
                     ", ".join(str(f.path) for f in ([copy] if copy else []) + missed))
        else:
            fresh.unread_at_truncation = old.seen_size > old.read_offset or old.splitter.pending_bytes > 0
            self.events.rotation("truncate", self.path)
            log.warning("%s was truncated at byte %d and no rotated copy was found; reading it from its start",
                        old.path, old.read_offset)
        self._report_held()

    # -- observability -------------------------------------------------------------------------

    def _report_held(self) -> None:
        rotated = self.draining
        self.events.held_files(len(rotated), sum(f.pending_bytes() for f in rotated))

    def backlog_bytes(self) -> int:
        """Bytes present in the followed files that have not been read yet."""
        return sum(f.pending_bytes() for f in self.files)


def _position(followed: FollowedFile, offset: int, max_line_bytes: int) -> None:
    """Set a file's read position to a line boundary found by a scan."""
    followed.read_offset = offset
    followed.splitter = LineSplitter(max_line_bytes, offset)
    take = min(MARKER_BYTES, offset)
    followed.marker = os.pread(followed.fd, take, offset - take) if take else b""
    followed.seen_size = max(followed.seen_size, offset)
