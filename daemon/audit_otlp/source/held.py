"""The versions of the audit log the daemon holds open until delivery has passed them.

A version read to its end waits in `done` until delivery passes its end (`delivered`), and is
then released: closed, never read again, its spool file deleted once a checkpoint without it is
durable. Until then it may vanish (the producer's tail-rewrite deletes it while the collector is
away), and then the only copy of its undelivered rows is our handle: `spool_vanished` copies them
(from the oldest undelivered row) into the spool at the tailer's next look, before a rotation
that made it vanish is reported. `snapshot` is what the checkpoint records: every version from
the one holding the delivery position on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import deque
from pathlib import Path

from audit_otlp.source.events import SourceEvents
from audit_otlp.source.fileid import FINGERPRINT_BYTES, FileIdentity
from audit_otlp.source.followed import FollowedFile
from audit_otlp.source.recent import RecentLines
from audit_otlp.source.siblings import rotated_siblings
from audit_otlp.source.spool import Spool, SpoolError, SpoolRecord
from audit_otlp.state.checkpoint import RECENT_DIGESTS, RELEASED_KEPT, Cursor, SourceState, VersionState

log = logging.getLogger(__name__)

SPOOL_RETRY = 5.0  # seconds between attempts to spool a version after one failed (a full disk)


class HeldVersions:
    """`done` (read to their end, not delivered to it) and the `files` being read, as one list."""

    def __init__(
        self,
        path: Path,
        rotated_glob: str,
        files: list[FollowedFile],
        finished: deque[FileIdentity],
        events: SourceEvents,
        spool: Spool | None,
    ) -> None:
        self.path = path
        self.rotated_glob = rotated_glob
        self.files = files  # the queue's list (shared, never replaced)
        self.finished = finished  # released versions: never read again
        self.events = events
        self.spool = spool
        self.done: list[FollowedFile] = []
        # (version, offset) delivered up to, as the last durable checkpoint has it: a SIGKILL
        # resumes there, so a version is released, and a vanished one spooled, only from there
        # (delivery itself may be ahead: a 2xx moves it before the checkpoint is on disk).
        self.durable = (0, 0)
        self.trash: list[SpoolRecord] = []  # spools of released versions: deleted once a checkpoint is durable
        self._serials = itertools.count(1)
        self._spool_failed: dict[int, float] = {}  # version -> when to try again (a full disk: said once)

    def all(self) -> list[FollowedFile]:
        """Every open version, oldest first (the path's file last), each numbered."""
        held = self.done + self.files
        for f in held:
            self.number(f)
        return held

    def number(self, f: FollowedFile) -> int:
        if not f.serial:
            f.serial = next(self._serials)
        return f.serial

    def _index_of(self, held: list[FollowedFile], version: int) -> int | None:
        return next((i for i, f in enumerate(held) if f.serial == version), None)

    def finish(self, f: FollowedFile) -> None:
        """`f` was read to its end: held until delivered (at once released if it already is)."""
        self.done.append(f)
        self._release()

    def _release(self) -> None:
        """Release what the durable position is past: each version read and delivered to its end."""
        version, offset = self.durable
        held = self.all()
        at = self._index_of(held, version)
        if at is None:
            return
        for f in list(self.done):
            i = held.index(f)
            if i < at or (i == at and offset >= f.read_offset and not f.splitter.pending_bytes):
                self.done.remove(f)
                f.close()
                self.finished.append(f.identity)
                if f.spool is not None:
                    self.trash.append(f.spool)
                log.info("released %s (read and delivered to its end)", f.path)

    def checkpoint_saved(self, state: SourceState) -> None:
        """A checkpoint is durable: what it has passed is released, and spool files it no longer
        names can go."""
        position = state.position
        if position.version:
            self.durable = (position.version, position.offset)
            self._release()
        if self.spool is None or not self.trash:
            return
        kept = {v.spool.name for v in state.versions if v.spool is not None}
        for record in [r for r in self.trash if r.name not in kept]:
            self.trash.remove(record)
            self.spool.remove(record)

    def drop_trash(self) -> bool:
        """The disk is too full for a checkpoint: delete the spool files of versions delivered to
        their end now, not once a checkpoint stops naming them (True if there was one). A crash
        before the next checkpoint then reports a gap for rows that were in fact delivered: a
        false alarm, never a loss, where keeping them would stop the checkpoint for good."""
        if self.spool is None or not self.trash:
            return False
        for record in self.trash:
            self.spool.remove(record)
            log.warning(
                "disk full: deleted the spool file %s of a delivered version to make room for the checkpoint", record.name
            )
        self.trash.clear()
        return True

    def snapshot(self, position: Cursor, recent: RecentLines) -> SourceState:
        """The versions list and recent lines for a checkpoint whose position is `position`."""
        held = self.all()
        at = self._index_of(held, position.version)
        versions = tuple(_version_state(f) for f in (held[at:] if at is not None else held))
        released = tuple(list(self.finished)[-RELEASED_KEPT:])
        return SourceState(
            position, versions, 0 if at is not None else None, recent.before(position.line_index, RECENT_DIGESTS), released
        )

    async def spool_vanished(self) -> bool:
        """Copy the undelivered bytes of every held version that vanished from disk (link count
        0, or under neither the path nor a sibling name) into the spool. True if one was."""
        if self.spool is None:
            return False
        held = self.all()
        at = self._index_of(held, self.durable[0]) or 0
        stats: list[tuple[FollowedFile, os.stat_result]] = []
        for f in held[at:]:
            if f.spool is None:
                try:
                    stats.append((f, os.fstat(f.fd)))
                except OSError:
                    continue
        # A glob of the sibling names only when some version is no longer the path's file.
        current = held[-1] if held else None
        needs_names = any(st.st_nlink > 0 and f is not current for f, st in stats)
        names = await asyncio.to_thread(_named_inodes, self.path, self.rotated_glob) if needs_names else set()
        spooled = False
        for f, st in stats:
            if st.st_nlink > 0 and (f is current or (st.st_dev, st.st_ino) in names):
                continue
            start = self.durable[1] if f.serial == self.durable[0] else (f.start_offset or 0)
            if start >= st.st_size:
                continue
            spooled |= await self._keep(f, start)
        return spooled

    async def _keep(self, f: FollowedFile, start: int) -> bool:
        assert self.spool is not None
        if time.monotonic() < self._spool_failed.get(f.serial, 0.0):
            return False
        try:
            f.refresh_identity()
            record = await asyncio.to_thread(self.spool.keep, f.fd, f.identity, start)
        except SpoolError as exc:
            if f.serial not in self._spool_failed:
                self.events.spool_failed(f.path, str(exc))
            self._spool_failed[f.serial] = time.monotonic() + SPOOL_RETRY
            return False
        f.spool, f.appendable = record, False
        self._spool_failed.pop(f.serial, None)
        self.events.spooled(f.path, record)
        return True


def _version_state(f: FollowedFile) -> VersionState:
    # A small file's fingerprint grows with it: record what it holds now (if it still holds what
    # was read from it), so that a restart tells it from a new file that reused its inode.
    if f.spool is None and f.identity.fingerprint_len < FINGERPRINT_BYTES and f.unchanged():
        f.refresh_identity()
    try:
        st = os.fstat(f.fd)
        size, mtime_ns, linked = max(st.st_size, f.read_offset), st.st_mtime_ns, st.st_nlink > 0 and f.spool is None
    except OSError:
        size, mtime_ns, linked = f.read_offset, 0, False
    else:
        # A copytruncate may have truncated it and the producer written past the copy's length
        # before the tailer looks again: that size is the next version's, and no copy would reach
        # it at a restart. So the stat counts only if the file still held what was read after it
        # (a truncation is never undone); else the last size and time seen while it did.
        if f.spool is None and not f.unchanged():
            size, mtime_ns = max(f.seen_size, f.read_offset), f.verified_mtime_ns
    start = f.start_offset if f.start_offset is not None else 0
    start_or_none = start if f.start_known else None
    return VersionState(f.identity, str(f.path), size, mtime_ns, start_or_none, f.spool, f.gap_if_new, f.gap_certain, linked)


def _named_inodes(path: Path, pattern: str) -> set[tuple[int, int]]:
    """(device, inode) of the path's file and of every sibling name (blocking)."""
    found = {(s.dev, s.ino) for s in rotated_siblings(pattern, path)}
    try:
        st = os.stat(path)
        found.add((st.st_dev, st.st_ino))
    except OSError:
        pass
    return found
