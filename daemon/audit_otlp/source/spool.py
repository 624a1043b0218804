"""The spool: the undelivered bytes of file versions that vanished from disk, kept in the state
directory so that a restart can still deliver them.

The producer's tail-rewrite deletes most of its file. While the daemon is behind (a collector
outage), the only copy of the undelivered rows is then the inode it holds open, which a restart
(deploy, reboot, OOM kill) would lose. So when a held version vanishes (link count 0, or found
under neither the path nor any sibling name), its undelivered bytes, from the oldest undelivered
row to its end, are copied here, fsynced with the directory, and recorded in the checkpoint.

A spool file keeps every byte at its original offset (a sparse file holding the first bytes that
fingerprint the version, the line just before the first kept row, then the rows), so reading it
is reading the version: offsets, fingerprint and line checks, span ids all stay the same. Its
name says which version and from where, so it is found again even if the daemon died before the
checkpoint recorded it. Bounded by `source.spool_max_bytes`: past the bound the oldest bytes are
kept, cut at a line end, and what could not be kept is counted exactly. A spool file is deleted
once a durable checkpoint no longer needs it. The audit log itself is never written.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit_otlp.source.fileid import FINGERPRINT_BYTES, FileIdentity
from audit_otlp.state.durable import fsync_directory

log = logging.getLogger(__name__)

SUFFIX = ".spool"
MARKER_BYTES = 128  # as source.followed: the bytes before a read offset that vouch for it
COPY_CHUNK = 1 << 20
LOOK_BACK = 64 * 1024
_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)-([0-9a-f]{64})-(\d+)\.spool$")


class SpoolError(Exception):
    """A version could not be spooled (disk full, no permission); reading goes on from its handle."""


@dataclass(frozen=True)
class SpoolRecord:
    """What one spool file holds: bytes [start, end) of a version that was `size` bytes long."""

    identity: FileIdentity  # the version the bytes come from (not the spool file's own inode)
    start: int  # the oldest undelivered row when it was spooled
    end: int  # just after the last byte kept (a line end)
    size: int  # the version's size when it vanished; end < size: the bound cut it
    lines_cut: int = 0  # complete lines in [end, size) that could not be kept

    @property
    def name(self) -> str:
        i = self.identity
        return f"{i.dev}-{i.ino}-{i.fingerprint_len}-{i.fingerprint}-{self.start}{SUFFIX}"

    @property
    def kept_bytes(self) -> int:
        return self.end - self.start

    @property
    def cut_bytes(self) -> int:
        return self.size - self.end

    def to_json(self) -> dict[str, Any]:
        return {"file": self.name, "start": self.start, "end": self.end, "size": self.size, "lines_cut": self.lines_cut}

    @classmethod
    def from_json(cls, identity: FileIdentity, doc: Any) -> SpoolRecord:
        return cls(identity, int(doc["start"]), int(doc["end"]), int(doc["size"]), int(doc.get("lines_cut") or 0))


def parse_name(name: str, size: int) -> SpoolRecord | None:
    """The record a spool file's name and size describe (its cut, if any, is in the checkpoint)."""
    m = _NAME.match(name)
    if m is None:
        return None
    identity = FileIdentity(int(m.group(1)), int(m.group(2)), m.group(4), int(m.group(3)))
    start = int(m.group(5))
    return SpoolRecord(identity, start, max(size, start), max(size, start))


class Spool:
    """The spool directory (created on first use) and the bytes it may hold."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.records: dict[str, SpoolRecord] = {}  # by file name: every spool file we know of

    @property
    def used_bytes(self) -> int:
        return sum(r.kept_bytes for r in self.records.values())

    def scan(self) -> list[SpoolRecord]:
        """The spool files on disk (a restart finds them by name; blocking)."""
        try:
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return []  # (a file where the directory should be is refused at start-up: wiring.build_spool)
        for name in names:
            if name in self.records:
                continue
            try:
                size = os.stat(self.directory / name).st_size
            except OSError:
                continue
            record = parse_name(name, size)
            if record is not None:
                self.records[name] = record
        return list(self.records.values())

    def adopt(self, record: SpoolRecord) -> None:
        """A record the checkpoint knows better (its size and cut) than the file name does."""
        self.records[record.name] = record

    def keep(self, fd: int, identity: FileIdentity, start: int) -> SpoolRecord:
        """Copy bytes [start, end of file) of the version open at `fd` (blocking). Raises SpoolError."""
        size = os.fstat(fd).st_size
        start = min(start, size)
        budget = max(self.max_bytes - self.used_bytes, 0)
        end = size if size - start <= budget else _line_end_before(fd, start, start + budget)
        record = SpoolRecord(identity, start, end, size, _count_lines(fd, end, size) if end < size else 0)
        path = self.directory / record.name
        tmp = self.directory / f".{record.name}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _copy(fd, out, 0, min(FINGERPRINT_BYTES, size))  # what fingerprints the version
                _copy(fd, out, _line_start_before(fd, start), end)  # the line that vouches for the offset, then the rows
                os.ftruncate(out, max(end, min(FINGERPRINT_BYTES, size)))
                os.fsync(out)
            finally:
                os.close(out)
            os.replace(tmp, path)
            fsync_directory(self.directory)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise SpoolError(f"cannot spool {size - start} bytes to {self.directory}: {exc.strerror or exc}") from exc
        self.records[record.name] = record
        return record

    def open(self, record: SpoolRecord) -> int:
        return os.open(self.directory / record.name, os.O_RDONLY | os.O_CLOEXEC)

    def remove(self, record: SpoolRecord) -> None:
        """Delete a spool file no durable checkpoint needs any more."""
        self.records.pop(record.name, None)
        try:
            os.unlink(self.directory / record.name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot delete spool file %s: %s", self.directory / record.name, exc)


def _copy(src: int, dst: int, start: int, end: int) -> None:
    """Bytes [start, end) of `src` to the same offsets of `dst` (holes elsewhere stay sparse)."""
    offset = start
    while offset < end:
        data = os.pread(src, min(COPY_CHUNK, end - offset), offset)
        if not data:
            break
        view = memoryview(data)
        at = offset
        while view:
            written = os.pwrite(dst, view, at)
            view, at = view[written:], at + written
        offset += len(data)


def _line_start_before(fd: int, start: int) -> int:
    """Where the line ending at `start` begins (a restart checks that line), looking back at most
    64 KiB; at least MARKER_BYTES before `start` (what a reader checks before an offset)."""
    take = min(start, LOOK_BACK)
    data = os.pread(fd, take, start - take)
    cut = data.rfind(b"\n", 0, max(len(data) - 1, 0))
    begin = start - take + cut + 1 if cut >= 0 else start - take
    return min(begin, max(start - MARKER_BYTES, 0))


def _line_end_before(fd: int, start: int, limit: int) -> int:
    """The end of the last complete line in [start, limit), or `start` when there is none."""
    at = limit
    while at > start:
        take = min(COPY_CHUNK, at - start)
        data = os.pread(fd, take, at - take)
        cut = data.rfind(b"\n")
        if cut >= 0:
            return at - take + cut + 1
        at -= take
    return start


def _count_lines(fd: int, start: int, end: int) -> int:
    count, offset = 0, start
    while offset < end:
        data = os.pread(fd, min(COPY_CHUNK, end - offset), offset)
        if not data:
            break
        count += data.count(b"\n")
        offset += len(data)
    return count
