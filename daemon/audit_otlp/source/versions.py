"""Find earlier versions of the audit log among its rotated siblings, while the daemon runs.

Two questions the tailer asks when the file at the path changed under it:
- a truncation: which sibling is the copy of what was truncated (copytruncate)? The one with the
  truncated file's first bytes and the same bytes just before our read offset.
- a new file, or a truncation: were there versions at the path only between two looks (two
  rotations within one poll interval)? Siblings written since the last look, newer than every
  sibling we hold or finished, that are not the copy of a file we hold that was truncated.
(At start-up the same siblings are searched by `resume.py`.)
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path

from audit_otlp.source.fileid import FileIdentity, fingerprint_matches
from audit_otlp.source.followed import FollowedFile, open_followed
from audit_otlp.source.siblings import Sibling, rotated_siblings

log = logging.getLogger(__name__)


class VersionFinder:
    def __init__(self, path: Path, pattern: str, max_line_bytes: int) -> None:
        self.path = path
        self.pattern = pattern
        self.max_line_bytes = max_line_bytes
        self.finished: deque[FileIdentity] = deque(maxlen=256)  # released files: never read again

    def copy_of(self, old: FollowedFile, held: set[tuple[int, int]]) -> FollowedFile | None:
        """The sibling with the truncated file's first bytes and the bytes before our offset."""
        if old.identity.fingerprint_len == 0:
            return None  # nothing identifies it (we never saw a byte of it)
        for sibling in reversed(rotated_siblings(self.pattern, self.path)):  # newest first
            if (sibling.dev, sibling.ino) in held or sibling.size < old.read_offset:
                continue
            try:
                candidate = open_followed(sibling.path, self.max_line_bytes)
            except OSError:
                continue
            marker_ok = not old.marker or os.pread(
                candidate.fd, len(old.marker), old.read_offset - len(old.marker)) == old.marker
            if marker_ok and fingerprint_matches(candidate.fd, old.identity):
                return candidate
            candidate.close()
        return None

    def missed(self, files: list[FollowedFile], since_ns: int) -> list[FollowedFile]:
        """Versions of the file that were at the path only between two looks, oldest first
        (blocking; run it in a thread). `files` are those we hold, the newest last."""
        held = [f.identity for f in files]
        siblings = rotated_siblings(self.pattern, self.path)
        newest_known = max((n for n, s in enumerate(siblings) if self._known(s, held)), default=-1)
        found: list[FollowedFile] = []
        for sibling in siblings[newest_known + 1:]:
            if sibling.mtime_ns < since_ns or any((i.dev, i.ino) == (sibling.dev, sibling.ino) for i in held):
                continue
            try:
                candidate = open_followed(sibling.path, self.max_line_bytes)
            except OSError:
                continue
            truncated_original = any(
                f.identity.fingerprint_len and fingerprint_matches(candidate.fd, f.identity) and not f.unchanged()
                for f in files)
            if truncated_original or candidate.identity.fingerprint_len == 0:
                # The copy of a file we hold that was truncated: taken up when its truncation is
                # handled (at the right offset). Or an empty file: nothing to read.
                candidate.close()
                continue
            # Anything else, even with the same first bytes as a file we hold or finished (a
            # tail-rewrite of a small file starts like it), is read after skipping its overlap.
            log.warning("%s was at %s only briefly (rotated again between two looks); reading it too",
                        sibling.path, self.path)
            candidate.start_known = False
            found.append(candidate)
        return found

    def _known(self, sibling: Sibling, held: list[FileIdentity]) -> bool:
        """A file we hold, or one we finished (same inode *and* first bytes: a finished file's
        inode may have been reused since)."""
        if any((i.dev, i.ino) == (sibling.dev, sibling.ino) for i in held):
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
