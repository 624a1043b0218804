"""Every "the path changed under us" decision, while the daemon runs, and what it does to the queue
of open files (the tailer only reads; docs/rotation.md tells the whole story).

The four cases, each ending in one call of `changed(kind)`:
- a new inode at the path (rename, tail-rewrite, delete and recreate, symlink switch): it is opened
  and queued, its start resolved when it becomes the head (it may repeat lines already read);
- a truncation (same inode, smaller or with other first bytes; even regrown between two looks):
  the rows between our offset and the truncation are taken from the rotated sibling with the
  same first bytes and the same bytes before our offset (copytruncate), then the truncated file
  is read again from its start;
- a file we only ever saw empty that was written since: copies made of it before we looked are
  found by modification time (no fingerprint can find them);
- versions at the path only between two looks (two rotations within one poll interval): siblings
  written since the last look, newer than every sibling we hold or finished.
(At start-up the same siblings are searched by `resume.py`.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

from audit_otlp.source.fileid import FileIdentity, fingerprint_matches, identify_fd
from audit_otlp.source.followed import FollowedFile, open_followed
from audit_otlp.source.lines import LineSplitter
from audit_otlp.source.siblings import Sibling, open_siblings, rotated_siblings

log = logging.getLogger(__name__)

CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # the clock file times are taken from


def coarse_now_ns() -> int:
    """Now, as the kernel would stamp a file written now (its coarse clock lags time.time())."""
    try:
        return time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
    except OSError:
        return time.time_ns() - 20_000_000


class PathChanges:
    """Compares the path with the files we hold and updates the queue (`files`, oldest first, the
    path's file last) when it moved on; `changed(kind)` is told "rename", "copytruncate" or
    "truncate" once the queue is updated, and awaited before the look returns (it secures what
    the change made vanish before anyone hears of it)."""

    def __init__(self, path: Path, pattern: str, max_line_bytes: int, changed: Callable[[str], Awaitable[None]]) -> None:
        self.path = path
        self.pattern = pattern
        self.max_line_bytes = max_line_bytes
        self.changed = changed
        self.finished: deque[FileIdentity] = deque(maxlen=256)  # released files: never read again
        self.done: list[FollowedFile] = []  # read to their end, held until delivered (held.done, shared)
        self.seen_at = coarse_now_ns()  # when the path last showed the newest file we hold

    async def check_path(self, files: list[FollowedFile]) -> bool:
        """Has the path moved on from the newest file we hold? True if the queue changed for it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed or deleted, nothing new yet: keep the handle, keep waiting
        except OSError as exc:
            log.warning("cannot stat %s: %s", self.path, exc)
            return False
        newest = files[-1]
        looked_at = coarse_now_ns()
        if newest.inode == (st.st_dev, st.st_ino):
            if not newest.unchanged():
                await self.truncated(files, len(files) - 1)
                return True
            await self.rewritten_unseen(files, newest)
            newest.refresh_identity()
            self.seen_at = looked_at
            return False
        if any(f.inode == (st.st_dev, st.st_ino) for f in files):
            return False  # the path points back at a file we already hold
        try:
            followed = open_followed(self.path, self.max_line_bytes)
        except OSError:
            return False  # gone again between stat and open: the next look will tell
        if any(f.inode == followed.inode for f in files):
            followed.close()
            return False
        followed.start_known = False
        missed = await asyncio.to_thread(self.missed, [*files, followed])
        files.extend([*missed, followed])
        self.seen_at = looked_at
        await self.changed("rename")
        return True

    async def rewritten_unseen(self, files: list[FollowedFile], followed: FollowedFile) -> bool:
        """A file we only ever saw empty was written since, and maybe copied and truncated again
        (copytruncate) before we looked: no fingerprint can find that copy, its modification
        time can. True if copies were queued before it."""
        if followed.identity.fingerprint_len or not followed.untouched:
            return False
        mtime_ns = os.fstat(followed.fd).st_mtime_ns
        if mtime_ns == followed.seen_mtime_ns:
            return False
        followed.seen_mtime_ns = mtime_ns
        missed = await asyncio.to_thread(self.missed, [*files, followed])
        if not missed:
            return False
        index = files.index(followed)
        files[index:index] = missed
        followed.start_known = False
        await self.changed("copytruncate")
        return True

    async def truncated(self, files: list[FollowedFile], index: int) -> None:
        """files[index] was truncated (and maybe written again) under us: recover the rows we
        had not read from its rotated copy, then read it again from its start. Versions it had
        between two looks are queued with it in the order they were last written: before it when
        it was truncated more than once, after it when it was renamed away since and newer
        files came to the path (copytruncate, then rename)."""
        old = files[index]
        fresh = FollowedFile(old.path, old.fd, identify_fd(old.fd), LineSplitter(self.max_line_bytes), 0, start_known=False)
        fresh.seen_size = fresh.identity.fingerprint_len
        held = {f.inode for f in files}
        copy = await asyncio.to_thread(self.copy_of, old, held)
        if copy is not None:
            copy.splitter, copy.read_offset, copy.marker = old.splitter, old.read_offset, old.marker
            # The copy is the same version (delivery positions name it by number); no writer appends to it.
            copy.serial, copy.start_offset, copy.appendable = old.serial, old.start_offset, False
            copy.gap_before, copy.gap_if_new, copy.gap_certain = old.gap_before, old.gap_if_new, old.gap_certain
            copy.start_known, copy.lines_before = old.start_known, old.lines_before
            files[index] = copy
            index += 1
        else:
            files.pop(index)
        missed = await asyncio.to_thread(self.missed, [*files, fresh])
        files[index:index] = sorted([*missed, fresh], key=lambda f: os.fstat(f.fd).st_mtime_ns)
        if copy is not None or missed:
            log.info(
                "%s was truncated; reading %s first", old.path, ", ".join(str(f.path) for f in ([copy] if copy else []) + missed)
            )
            await self.changed("copytruncate")
        elif old.untouched and (queued := next((f for f in files[:index] if self._holds_all_of(f, old)), None)):
            # Copied before we read a byte of it, and the copy is already queued before it (a
            # restart's scan saw the copy, then the truncate came): its rows come from there.
            log.info("%s was truncated; its rows are in %s, queued before it", old.path, queued.path)
            await self.changed("copytruncate")
        else:
            if old.seen_size > old.read_offset or old.splitter.pending_bytes > 0:
                # Rows not read yet are gone, unless a version queued before it holds them (a copy
                # taken while we looked): its first row tells, naming the last row read or not.
                fresh.gap_if_new = (
                    f"{old.path} was truncated with rows not yet read and no rotated copy matching {self.pattern} holds them"
                )
                fresh.gap_certain = True
            log.warning(
                "%s was truncated at byte %d and no rotated copy was found; reading it from its start", old.path, old.read_offset
            )
            await self.changed("truncate")

    @staticmethod
    def _holds_all_of(copy: FollowedFile, old: FollowedFile) -> bool:
        """Does queued `copy` begin with everything `old` was seen to hold?"""
        try:
            return (
                bool(old.identity.fingerprint_len) and copy.size() >= old.seen_size and fingerprint_matches(copy.fd, old.identity)
            )
        except OSError:
            return False

    # -- the sibling searches (blocking; run them in a thread) ---------------------------------

    def copy_of(self, old: FollowedFile, held: set[tuple[int, int]]) -> FollowedFile | None:
        """The sibling with the truncated file's first bytes and the bytes before our offset."""
        if old.identity.fingerprint_len == 0:
            return None  # nothing identifies it (we never saw a byte of it)
        candidates = open_siblings(
            self.pattern,
            self.path,
            self.max_line_bytes,
            lambda s: (s.dev, s.ino) not in held and s.size >= old.read_offset,
        )
        found = None
        for _, candidate in reversed(candidates):  # newest first
            if found is None:
                marker_ok = not old.marker or (
                    os.pread(candidate.fd, len(old.marker), old.read_offset - len(old.marker)) == old.marker
                )
                if marker_ok and fingerprint_matches(candidate.fd, old.identity):
                    found = candidate
                    continue
            candidate.close()
        return found

    def missed(self, files: list[FollowedFile]) -> list[FollowedFile]:
        """Versions of the file that were at the path only between two looks, oldest first.
        `files` are those being read, the newest last; those read to their end and waiting for
        delivery (`done`) are held too (a copy among them is no version seen briefly)."""
        held = {f.inode for f in [*files, *self.done]}
        siblings = rotated_siblings(self.pattern, self.path)
        newest_known = max((n for n, s in enumerate(siblings) if self._known(s, held)), default=-1)
        newer = {
            (s.dev, s.ino) for s in siblings[newest_known + 1 :] if s.mtime_ns >= self.seen_at and (s.dev, s.ino) not in held
        }
        found: list[FollowedFile] = []
        for sibling, candidate in open_siblings(self.pattern, self.path, self.max_line_bytes, lambda s: (s.dev, s.ino) in newer):
            truncated_original = any(
                f.identity.fingerprint_len and fingerprint_matches(candidate.fd, f.identity) and not f.unchanged() for f in files
            )
            if truncated_original or candidate.identity.fingerprint_len == 0:
                # The copy of a file we hold that was truncated: taken up when its truncation is
                # handled (at the right offset). Or an empty file: nothing to read.
                candidate.close()
                continue
            # Anything else, even with the same first bytes as a file we hold or finished (a
            # tail-rewrite of a small file starts like it), is read after skipping its overlap.
            log.warning("%s was at %s only briefly (rotated again between two looks); reading it too", sibling.path, self.path)
            candidate.start_known = False
            found.append(candidate)
        return found

    def _known(self, sibling: Sibling, held: set[tuple[int, int]]) -> bool:
        """A file we hold, or one we finished (same inode *and* first bytes: a finished file's
        inode may have been reused since)."""
        if (sibling.dev, sibling.ino) in held:
            return True
        finished = [i for i in self.finished if (i.dev, i.ino) == (sibling.dev, sibling.ino) and i.fingerprint_len]
        if not finished:
            return False
        try:
            fd = os.open(sibling.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return any(fingerprint_matches(fd, i) for i in finished)
        finally:
            os.close(fd)
