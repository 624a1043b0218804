"""One open, read-only handle on a version of the audit log, and the scans the tailer runs on it.

A `FollowedFile` is the unit the tailer queues: the file at the path, a rotated-away file still
being drained, or a rotated copy that holds rows a copytruncate cut off. The handle stays valid
whatever happens to the name (rename, delete, symlink switch), which is what lets the tailer
finish a rotated file before it moves on.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles
from aiofiles.threadpool.binary import AsyncFileIO

from audit_otlp.source.fileid import FileIdentity, fingerprint_matches, identify_fd
from audit_otlp.source.lines import Line, LineSplitter
from audit_otlp.source.spool import SpoolRecord

CHUNK_BYTES = 256 * 1024
MARKER_BYTES = 128  # bytes just before the read offset, re-checked to see a file rewritten under us


@dataclass
class FollowedFile:
    path: Path  # the name it was opened under; a rotated file keeps it (its new name is unknown)
    fd: int
    identity: FileIdentity
    splitter: LineSplitter
    read_offset: int
    start_known: bool = True  # False: may begin with lines already read; resolved when reached
    lines_before: int = 0  # complete lines before the read position (handed out or skipped)
    marker: bytes = b""  # the last <= MARKER_BYTES bytes before read_offset
    seen_size: int = 0  # the largest size observed: a smaller one later means a truncation
    seen_mtime_ns: int = 0  # modification time at the last look
    verified_mtime_ns: int = 0  # modification time at the last look that found it unchanged
    serial: int = 0  # the queue's number for this version (a copy that replaces it keeps it)
    appendable: bool = True  # a writer may still append (False: a copytruncate copy, a spool, link count 0)
    start_offset: int | None = None  # where reading it started, once resolved (for the checkpoint)
    spool: SpoolRecord | None = None  # its undelivered bytes, kept in the state directory
    gap_before: str | None = None  # rows before its first row vanished unseen: mark that row
    gap_reported: bool = False  # that gap was already counted and logged (before a restart)
    gap_if_new: str | None = None  # a version before it vanished: no overlap with it means a gap
    gap_certain: bool = True  # ... with rows not delivered (False: it may have grown, unknown)
    _inode: tuple[int, int] | None = None
    _reader: AsyncFileIO | None = field(default=None, repr=False, compare=False)  # aiofiles' view of `fd`

    @property
    def inode(self) -> tuple[int, int]:
        """(device, inode) of the file actually open: for a version read from the spool, the
        spool file's, never the vanished original's (whose number a new file may have reused)."""
        if self._inode is None:
            st = os.fstat(self.fd)
            self._inode = (st.st_dev, st.st_ino)
        return self._inode

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def pending_bytes(self) -> int:
        try:
            return max(self.size() - self.read_offset, 0) + self.splitter.pending_bytes
        except OSError:
            return 0

    async def read_chunk(self, max_bytes: int = CHUNK_BYTES) -> bytes:
        """Up to `max_bytes` at read_offset, in one hop to aiofiles' worker thread (the pool that
        asyncio.to_thread uses). The lseek on the loop moves only the fd's offset (no disk I/O);
        doing it every time, not only when read_offset jumps, keeps no bookkeeping that a
        FollowedFile taking over this fd (a truncation) could leave stale. It relies on one read
        at a time per fd (the tailer's one reader task); everything else reads it with pread,
        which leaves the offset alone."""
        os.lseek(self.fd, self.read_offset, os.SEEK_SET)  # first: a closed fd raises OSError (EBADF) as pread did
        reader = self._reader
        if reader is None:  # the already-open fd, never reopened by path: it outlives renames
            reader = self._reader = await aiofiles.open(self.fd, "rb", buffering=0, closefd=False)
        return await reader.read(max_bytes)

    def accept(self, data: bytes) -> list[Line]:
        """Take a chunk read at read_offset (after `unchanged()` vouched for it)."""
        self.marker = (self.marker + data)[-MARKER_BYTES:]
        self.read_offset += len(data)
        self.seen_size = max(self.seen_size, self.read_offset)
        return self.splitter.feed(data)

    def position_at(self, offset: int) -> None:
        """Continue reading at `offset`, a line boundary found by a scan."""
        self.start_offset = offset if self.start_offset is None else self.start_offset
        self.read_offset = offset
        self.splitter = LineSplitter(self.splitter.max_line_bytes, offset)
        take = min(MARKER_BYTES, offset)
        self.marker = os.pread(self.fd, take, offset - take) if take else b""
        self.seen_size = max(self.seen_size, offset)

    def unchanged(self) -> bool:
        """Does the file still hold what we read from it? False after a truncation or a rewrite,
        even one that regrew past our offset between two looks (fingerprint + bytes before offset)."""
        try:
            st = os.fstat(self.fd)
            size = st.st_size
            if size < self.read_offset or size < self.seen_size:
                return False
            if not fingerprint_matches(self.fd, self.identity):
                return False
            if self.marker:
                at = self.read_offset - len(self.marker)
                if os.pread(self.fd, len(self.marker), at) != self.marker:
                    return False
        except OSError:
            return False
        self.seen_size = max(self.seen_size, size)
        self.verified_mtime_ns = max(self.verified_mtime_ns, st.st_mtime_ns)
        return True

    @property
    def untouched(self) -> bool:
        """Nothing was read from it yet (so nothing identifies its old content)."""
        return self.read_offset == 0 and self.lines_before == 0 and self.splitter.pending_bytes == 0

    def refresh_identity(self) -> None:
        """While the file is shorter than the fingerprint size its fingerprint grows with it."""
        if self.identity.fingerprint_len < 1024:
            self.identity = identify_fd(self.fd)

    def unterminated_tail(self, successor: FollowedFile) -> Line | None:
        """For a finished file: its held partial last line, unless `successor` continues it
        where it starts reading (a tail-rewrite copies that line over)."""
        if not self.splitter.pending_bytes:
            return None
        held = self.splitter.pending_data()
        if held is not None and os.pread(successor.fd, len(held), successor.read_offset) == held:
            return None
        return self.splitter.take_unterminated()

    def may_grow(self) -> bool:
        """Could a writer still append to this rotated version? Not to a copy, a spool, or an
        inode no name points to (so no quiet-period wait for those: no self-made lag)."""
        if not self.appendable:
            return False
        try:
            return os.fstat(self.fd).st_nlink > 0
        except OSError:
            return False

    def quiet_for(self) -> float:
        """Seconds since the file was last written (a writer may still hold a rotated file)."""
        try:
            return time.time() - os.fstat(self.fd).st_mtime
        except OSError:
            return float("inf")

    def close(self) -> None:
        """Close the handle (once: a descriptor number may be reused by the next open)."""
        if self.fd < 0:
            return
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.fd = -1
        self._reader = None  # it names the closed fd (closefd=False: dropping it closes nothing)


def open_followed(path: Path, max_line_bytes: int, offset: int = 0) -> FollowedFile:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # read-only, always
    try:
        identity = identify_fd(fd)
    except OSError:
        os.close(fd)
        raise
    mtime_ns = os.fstat(fd).st_mtime_ns
    return FollowedFile(
        path,
        fd,
        identity,
        LineSplitter(max_line_bytes, offset),
        offset,
        seen_size=identity.fingerprint_len,
        seen_mtime_ns=mtime_ns,
        verified_mtime_ns=mtime_ns,
    )


def scan_lines(fd: int, max_line_bytes: int, start: int = 0, end: int | None = None) -> Iterator[Line]:
    """Complete lines of the file from `start` (blocking reads; run it in a thread)."""
    splitter = LineSplitter(max_line_bytes, start)
    offset = start
    while end is None or offset < end:
        want = CHUNK_BYTES if end is None else min(CHUNK_BYTES, end - offset)
        chunk = os.pread(fd, want, offset)
        if not chunk:
            return
        offset += len(chunk)
        yield from splitter.feed(chunk)


def line_ends_at(fd: int, offset: int, sha256_hex: str, length: int | None, max_line_bytes: int) -> bool:
    """Does the line ending at `offset` (newline included) hash to `sha256_hex`?"""
    if offset == 0:
        return True
    if length is not None:
        start = offset - length - 1
        if start < 0:
            return False
        data = os.pread(fd, length + 1, start)
        return data.endswith(b"\n") and hashlib.sha256(data[:-1]).hexdigest() == sha256_hex
    # An oversize line: only its digest is known, so walk the lines (rare).
    for line in scan_lines(fd, max_line_bytes, 0, offset):
        if line.end == offset:
            return line.digest.hex() == sha256_hex
    return False


def find_line_end(fd: int, sha256_hex: str, max_line_bytes: int) -> tuple[int, int] | None:
    """(offset just after, line count up to it) of the last line hashing to `sha256_hex`."""
    wanted = bytes.fromhex(sha256_hex)
    found = None
    for count, line in enumerate(scan_lines(fd, max_line_bytes), start=1):
        if line.digest == wanted:
            found = (line.end, count)
    return found


def first_line(fd: int, max_line_bytes: int, start: int) -> bytes | None:
    """The first complete, non-blank line from `start` (blocking); None when there is none."""
    for line in scan_lines(fd, max_line_bytes, start):
        if line.data is not None and line.data.strip():
            return line.data
    return None


def last_line_boundary(fd: int) -> int:
    size = os.fstat(fd).st_size
    window = min(size, 1024 * 1024)
    data = os.pread(fd, window, size - window)
    cut = data.rfind(b"\n")
    if cut >= 0:
        return size - window + cut + 1
    return 0 if window == size else size  # one giant partial line: skip it, it is not new
