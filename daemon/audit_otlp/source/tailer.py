"""Follow the audit log across rotations and hand out complete lines in file order.

A queue of open, read-only handles, oldest first: rotated-away files still to be finished, copies
holding rows a copytruncate cut off, and last the file at the path; reading takes the head. A
monitor task looks at the path (inotify wake-ups, polling as the source of truth) even while the
reader is held back by a collector outage, so every version is opened while it still exists.

`FileQueue.read_once()` is steps 1-3 and 9-10 of the cycle in docs/design.md ("One cycle");
`changes.py` decides what a change at the path means ("Rotation cases").
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from audit_otlp.source.changes import PathChanges, coarse_now_ns
from audit_otlp.source.events import LogOnlyEvents, SourceEvents
from audit_otlp.source.fileid import FileIdentity
from audit_otlp.source.followed import FollowedFile, RecentLines, last_line_boundary, open_followed, overlap_end
from audit_otlp.source.lines import Line
from audit_otlp.source.resume import ResumePoint, locate
from audit_otlp.source.watch import FileWatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LineChunk:
    path: Path
    identity: FileIdentity
    lines: list[Line]
    first_line_number: int  # 1-based number of the first line in its file (0 when unknown)


class Tailer:
    """The source's public face: start (resume or the path's file), read with a timeout, and a
    monitor task that looks at the path even while the reader is held back."""

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
        self.watcher = FileWatcher(path, poll_interval)
        # A writer that opened the file before the rename may still append to it: a rotated file
        # is released once it is at its end and has not been written for this long.
        quiet = min(poll_interval, 1.0) if rotate_quiet is None else rotate_quiet
        self.queue = FileQueue(path, max_line_bytes, rotated_glob or f"{path}.*", events or LogOnlyEvents(), self.watcher, quiet)
        self.at_end = False  # the last read found nothing anywhere (for --once)
        self._lock = asyncio.Lock()  # the reader and the monitor take turns on the queue
        self._monitor_task: asyncio.Task[None] | None = None

    @property
    def current(self) -> FollowedFile | None:
        return self.queue.files[-1] if self.queue.files else None

    @property
    def draining(self) -> list[FollowedFile]:
        """Rotated files held open until they are read to their end."""
        return self.queue.files[:-1]

    async def start(self, resume: ResumePoint | None, start_at: str = "beginning") -> None:
        self.watcher.start()
        if resume is not None and not resume.says_nothing:
            self.queue.resume = resume
        self.queue.start_at_end = resume is None and start_at == "end"
        async with self._lock:
            await self.queue.open_initial()
        self.queue.changes.seen_at = coarse_now_ns()
        self._monitor_task = asyncio.create_task(self._monitor(), name="tailer-monitor")

    async def close(self) -> None:
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            await asyncio.gather(self._monitor_task, return_exceptions=True)
            self._monitor_task = None
        self.watcher.close()
        for followed in self.queue.files:
            followed.close()
        self.queue.files.clear()

    async def poll(self) -> None:
        """One monitor cycle: look at the path now (tests call this instead of waiting)."""
        async with self._lock:
            await self.queue.check_path()

    async def _monitor(self) -> None:
        """Notice rotations while the reader is busy or blocked (collector down): open each new
        version of the file and capture a copytruncate's copy while they still exist."""
        channel = self.watcher.channel()
        while True:
            await self.watcher.wait(None, channel)
            async with self._lock:
                try:
                    await self.queue.check_path()
                except OSError as exc:
                    log.warning("cannot check %s: %s", self.path, exc)

    async def read(self, timeout: float | None) -> LineChunk | None:
        """The next lines in file order, or None if none arrived within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            async with self._lock:
                chunk = await self.queue.read_once()
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

    def backlog_bytes(self) -> int:
        """Bytes present in the followed files that have not been read yet."""
        return sum(f.pending_bytes() for f in self.queue.files)


class FileQueue:
    """The open handles, oldest first (the path's file last), and one read cycle on them: the
    head is read, finished rotated files are released, and `changes` is asked about the path."""

    def __init__(
        self, path: Path, max_line_bytes: int, rotated_glob: str, events: SourceEvents, watcher: FileWatcher, rotate_quiet: float
    ) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.rotated_glob = rotated_glob
        self.events = events
        self.watcher = watcher
        self.rotate_quiet = rotate_quiet
        self.files: list[FollowedFile] = []
        self.recent = RecentLines()
        self.resume: ResumePoint | None = None  # searched for on the first open
        self.resume_tried = False
        self.start_at_end = False
        self.changes = PathChanges(path, rotated_glob, max_line_bytes, self._path_changed)

    def quiet_wait(self) -> float | None:
        """Seconds until the finished rotated head may be released; None when not waiting."""
        if len(self.files) < 2:
            return None
        return max(self.rotate_quiet - self.files[0].quiet_for(), 0.01)

    async def read_once(self) -> LineChunk | None:
        """One read cycle (the steps above); None when there is nothing to read now."""
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
                if head.quiet_for() < self.rotate_quiet:
                    return None
                chunk = await self._release_head()
                if chunk is not None:
                    return chunk
                continue
            if not await self.check_path():
                return None

    def _emit(self, followed: FollowedFile, lines: list[Line]) -> LineChunk:
        for line in lines:
            self.recent.add(line.digest)
        first = followed.lines_before + 1
        followed.lines_before += len(lines)
        if followed is not self.files[-1]:
            self._report_held()
        return LineChunk(followed.path, followed.identity, lines, first)

    async def _resolve_start(self, followed: FollowedFile) -> None:
        """A newer file becomes the head: skip the lines it repeats (a tail-rewrite's overlap)."""
        offset, skipped = await asyncio.to_thread(overlap_end, followed.fd, self.max_line_bytes, self.recent)
        followed.position_at(offset)
        followed.lines_before = skipped
        followed.start_known = True
        if skipped:
            log.info("%s begins with %d lines already read (tail-rewrite); continuing at byte %d", followed.path, skipped, offset)
        elif followed.unread_at_truncation:
            self.events.resume_gap(
                f"{followed.path} was truncated with rows not yet read and no rotated copy "
                f"matching {self.rotated_glob} holds them"
            )

    async def _release_head(self) -> LineChunk | None:
        """The rotated head is finished: close it and hand out its unterminated last line, if
        any, unless the next file continues that line (a tail-rewrite copies it over)."""
        head, successor = self.files[0], self.files[1]
        if not successor.start_known:
            await self._resolve_start(successor)
        tail = head.unterminated_tail(successor)
        self.files.pop(0)
        head.close()
        self.changes.finished.append(head.identity)
        log.info("released rotated file %s (read to its end)", head.path)
        self._report_held()
        return self._emit(head, [tail]) if tail is not None else None

    async def open_initial(self) -> None:
        """Open the file(s) to start with: the resume point's chain, or the path's file."""
        if self.resume is not None:
            if self.resume_tried and not os.path.exists(self.path):
                return  # already looked everywhere; wait for the file to appear
            self.resume_tried = True
            located = await asyncio.to_thread(locate, self.path, self.rotated_glob, self.resume, self.max_line_bytes, self.recent)
            if located is None:
                return
            self.resume = None
            if located.gap is not None:
                self.events.resume_gap(located.gap)
            else:
                log.info("resuming at %s", located.how)
            self.files = located.files
            self.changes.finished.extend(located.older)
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
        rotated = self.files[:-1]
        self.events.held_files(len(rotated), sum(f.pending_bytes() for f in rotated))
