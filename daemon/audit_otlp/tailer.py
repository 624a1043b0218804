"""Follow the audit log across rotations and hand out complete lines in file order.

One cycle of `Tailer.read()`:
1. If a rotated-away file is still held, read it (its handle stays valid after a rename);
   once it is at its end and quiet, release it.
2. Read the current file from its read offset in large chunks; complete lines go out.
3. At the end of the current file, stat the path: a different inode means a rotation (the old
   handle is kept and drained first, then the new file is read after its overlap with what was
   already read); the same inode but a smaller size or other first bytes means a truncation.
4. Nothing to do: wait for an inotify wake-up or the poll interval, whichever is first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiofiles
import aiofiles.threadpool.binary

from audit_otlp.fileid import FileIdentity, fingerprint_matches, identify_fd
from audit_otlp.lines import Line, LineSplitter
from audit_otlp.watch import FileWatcher

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024


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


@dataclass
class FollowedFile:
    """One open handle on the audit log: the current file, or a rotated one being drained."""

    path: Path
    handle: aiofiles.threadpool.binary.AsyncBufferedReader
    identity: FileIdentity
    splitter: LineSplitter
    read_offset: int
    rotated: bool = False
    lines_before: int = 0  # complete lines before read position that were handed out or skipped
    last_growth: float = field(default_factory=time.monotonic)

    @property
    def fd(self) -> int:
        return self.handle.fileno()

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    async def read_lines(self, max_bytes: int = CHUNK_BYTES) -> list[Line]:
        """Complete lines from the next chunk; [] at end of file (a partial line is held)."""
        while True:
            await self.handle.seek(self.read_offset)
            chunk = await self.handle.read(max_bytes)
            if not chunk:
                return []
            self.read_offset += len(chunk)
            self.last_growth = time.monotonic()
            lines = self.splitter.feed(chunk)
            if lines:
                return lines
            # Only part of a (long) line: keep reading so a partial line never blocks forever.

    def refresh_identity(self) -> None:
        """While the file is shorter than the fingerprint size, its fingerprint grows with it."""
        if self.identity.fingerprint_len < 1024:
            self.identity = identify_fd(self.fd)

    async def close(self) -> None:
        await self.handle.close()


async def open_followed(path: Path, offset: int, max_line_bytes: int) -> FollowedFile:
    handle = await aiofiles.open(path, "rb")  # read-only, always
    identity = identify_fd(handle.fileno())
    return FollowedFile(path, handle, identity, LineSplitter(max_line_bytes, offset), offset)


def line_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
        self.rotated_glob = rotated_glob
        self.events: SourceEvents = events or LogOnlyEvents()
        self.watcher = FileWatcher(path, poll_interval)
        self.rotate_quiet = poll_interval if rotate_quiet is None else rotate_quiet
        self.current: FollowedFile | None = None
        self.draining: list[FollowedFile] = []  # rotated-away files, oldest first
        self.at_end = False  # the last read found nothing anywhere (for --once)
        self._resume: ResumePoint | None = None
        self._start_at_end = False
        self._last_line: bytes | None = None  # the last complete line handed out
        self._search_overlap = False  # the next new file may begin with lines already read

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, resume: ResumePoint | None, start_at: str = "beginning") -> None:
        self.watcher.start()
        self._resume = resume
        self._start_at_end = resume is None and start_at == "end"
        await self._open_current()

    async def close(self) -> None:
        self.watcher.close()
        for followed in [*self.draining, *([self.current] if self.current else [])]:
            await followed.close()
        self.draining.clear()
        self.current = None

    # -- reading -------------------------------------------------------------------------------

    async def read(self, timeout: float | None) -> LineChunk | None:
        """The next lines in file order, or None if none arrived within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            chunk = await self._read_once()
            if chunk is not None:
                self.at_end = False
                return chunk
            self.at_end = True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            await self.watcher.wait(remaining)

    async def _read_once(self) -> LineChunk | None:
        while self.draining:
            old = self.draining[0]
            lines = await old.read_lines()
            if lines:
                return self._emit(old, lines)
            if time.monotonic() - old.last_growth < self.rotate_quiet:
                return None  # a writer may still hold the rotated file open
            tail = old.splitter.take_unterminated()
            self.draining.pop(0)
            await old.close()
            self._report_held()
            log.info("released rotated file %s after reading it to its end", old.path)
            if tail is not None:
                return self._emit(old, [tail])
        if self.current is None:
            await self._open_current()
            if self.current is None:
                return None
        lines = await self.current.read_lines()
        if lines:
            return self._emit(self.current, lines)
        self.current.refresh_identity()
        if await self._check_path():
            return await self._read_once()
        return None

    def _emit(self, followed: FollowedFile, lines: list[Line]) -> LineChunk:
        for line in reversed(lines):
            if line.data is not None:
                self._last_line = line.data
                break
        first = followed.lines_before + 1
        followed.lines_before += len(lines)
        return LineChunk(followed.path, followed.identity, lines, first)

    # -- rotation ------------------------------------------------------------------------------

    async def _check_path(self) -> bool:
        """At the end of the current file: has the path moved on? True if something changed."""
        assert self.current is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed or deleted, nothing new yet: keep the handle, keep waiting
        except OSError as exc:
            log.warning("cannot stat %s: %s", self.path, exc)
            return False
        current = self.current
        if not current.identity.same_inode(st):
            self.events.rotation("rename", self.path)
            current.rotated = True
            current.last_growth = time.monotonic()
            self.draining.append(current)
            self.current = None
            self._search_overlap = True
            self._report_held()
            await self._open_current()
            return True
        if st.st_size < current.read_offset or not fingerprint_matches(current.fd, current.identity):
            self.events.rotation("truncate", self.path)
            await self._restart_current(search_overlap=True)
            return True
        return False

    async def _restart_current(self, search_overlap: bool) -> None:
        assert self.current is not None
        await self.current.close()
        self.current = None
        self._search_overlap = search_overlap
        await self._open_current()

    async def _open_current(self) -> None:
        try:
            followed = await open_followed(self.path, 0, self.max_line_bytes)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot open %s: %s", self.path, exc)
            return
        self.watcher.follow(self.path)
        offset = 0
        if self._resume is not None:
            offset = await self._resume_offset(followed, self._resume)
            self._resume = None
        elif self._start_at_end:
            offset = await _last_line_boundary(followed)
            self._start_at_end = False
        elif self._search_overlap and self._last_line is not None:
            found = await _find_line_end(followed, self._last_line)
            if found is not None:
                log.info("new file %s repeats lines already read; continuing after them at byte %d", self.path, found)
                offset = found
        self._search_overlap = False
        if offset:
            followed.lines_before = await _count_lines(followed, offset)
        followed.read_offset = offset
        followed.splitter = LineSplitter(self.max_line_bytes, offset)
        self.current = followed

    async def _resume_offset(self, followed: FollowedFile, resume: ResumePoint) -> int:
        """Where to continue in the current file after a restart."""
        if resume.identity is not None and resume.identity.same_inode(os.fstat(followed.fd)):
            if fingerprint_matches(followed.fd, resume.identity) and await _line_before_matches(followed, resume):
                return resume.offset
        if resume.last_line_sha256 is None:
            if resume.offset == 0:
                return 0
            self.events.resume_gap("the checkpoint names no last line to find")
            return 0
        found = await _find_line_end(followed, None, resume.last_line_sha256)
        if found is not None:
            log.info("resuming %s at byte %d, found by the last delivered line", self.path, found)
            return found
        self.events.resume_gap(
            f"the last delivered line (sha256 {resume.last_line_sha256[:16]}...) is not in {self.path}"
        )
        return 0

    # -- observability -------------------------------------------------------------------------

    def _report_held(self) -> None:
        pending = 0
        for followed in self.draining:
            try:
                pending += max(followed.size() - followed.read_offset, 0)
            except OSError:
                pass
        self.events.held_files(len(self.draining), pending)

    def backlog_bytes(self) -> int:
        """Bytes present in the followed files that have not been read yet."""
        total = 0
        for followed in [*self.draining, *([self.current] if self.current else [])]:
            try:
                total += max(followed.size() - followed.read_offset, 0) + followed.splitter.pending_bytes
            except OSError:
                pass
        return total


async def _line_before_matches(followed: FollowedFile, resume: ResumePoint) -> bool:
    """Does the line that ends at the resume offset still hash to the delivered line's hash?"""
    if resume.offset == 0:
        return True
    if resume.last_line_sha256 is None or resume.last_line_length is None:
        return False
    start = resume.offset - resume.last_line_length - 1
    if start < 0:
        return False
    await followed.handle.seek(start)
    data = await followed.handle.read(resume.last_line_length + 1)
    return data.endswith(b"\n") and line_sha256(data[:-1]) == resume.last_line_sha256


async def _find_line_end(followed: FollowedFile, line: bytes | None, sha256_hex: str | None = None) -> int | None:
    """The offset just after the last line equal to `line` (or hashing to `sha256_hex`)."""
    wanted = line_sha256(line) if line is not None else sha256_hex
    splitter = LineSplitter(2**31)  # lines are compared by hash; overlap files are small
    offset, found = 0, None
    while True:
        await followed.handle.seek(offset)
        chunk = await followed.handle.read(CHUNK_BYTES)
        if not chunk:
            return found
        offset += len(chunk)
        for candidate in splitter.feed(chunk):
            if candidate.data is not None and line_sha256(candidate.data) == wanted:
                found = candidate.end


async def _last_line_boundary(followed: FollowedFile) -> int:
    size = followed.size()
    window = min(size, 1024 * 1024)
    await followed.handle.seek(size - window)
    data = await followed.handle.read(window)
    cut = data.rfind(b"\n")
    if cut >= 0:
        return size - window + cut + 1
    return 0 if window == size else size  # one giant partial line: skip it, it is not new


async def _count_lines(followed: FollowedFile, limit: int) -> int:
    """Newlines in the first `limit` bytes: the line number of a resume point."""
    count, offset = 0, 0
    while offset < limit:
        await followed.handle.seek(offset)
        chunk = await followed.handle.read(min(CHUNK_BYTES, limit - offset))
        if not chunk:
            break
        count += chunk.count(b"\n")
        offset += len(chunk)
    return count
