"""Where to continue after a restart from a version 1 checkpoint (one cursor, no versions list):
the position's file is searched for among the current file and its rotated siblings, oldest
first: the same inode with the same first bytes and the delivered line still ending at the
offset; another file with the same first bytes and line (a copytruncate copy); the oldest file
holding a line with that hash anywhere (a tail-rewrite moved it). Reading continues there, then
through every newer sibling, then the current file, each skipping the lines it repeats. Found
nowhere: a gap, and the current file from its start. (`resume.py` does the version 2 search.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from audit_otlp.source.fileid import FileIdentity, fingerprint_matches
from audit_otlp.source.followed import FollowedFile, find_line_end, line_ends_at
from audit_otlp.source.recent import RecentLines, prime
from audit_otlp.state.checkpoint import Cursor


@dataclass
class Located:
    files: list[FollowedFile]  # the first starts at the resume point; the others at their start or after their overlap
    how: str  # for the log line
    gap: str | None = None  # the rows before files[0]'s first row vanished unseen (to report)
    older: list[FileIdentity] = field(default_factory=list)  # files before the resume point: done
    at_position: bool = False  # files[0] starts exactly at the checkpoint's position (not moved)


def locate_v1(
    path: Path, candidates: list[FollowedFile], resume: Cursor, max_line_bytes: int, recent: RecentLines
) -> Located | None:
    index, offset, how = _find_v1(candidates, resume, max_line_bytes)
    if index is None:
        current = candidates[-1] if candidates and candidates[-1].path == path else None
        older = [f.identity for f in candidates if f is not current]
        for f in candidates:
            if f is not current:
                f.close()
        if current is None:
            return None
        if resume.offset == 0 and resume.last_line_sha256 is None:
            return Located([current], "the start of the current file (nothing was delivered yet)", older=older)
        digest = (resume.last_line_sha256 or "unknown")[:16]
        gap = f"the last delivered line (sha256 {digest}...) is in none of {path} and its rotated siblings"
        current.gap_before = gap
        return Located([current], "the start of the current file", gap=gap, older=older)
    older = [f.identity for f in candidates[:index]]
    for f in candidates[:index]:
        f.close()
    chain = candidates[index:]
    first = chain[0]
    first.lines_before = prime(first.fd, max_line_bytes, offset, recent)
    first.position_at(offset)
    for later in chain[1:]:
        later.start_known = False
    return Located(chain, f"byte {offset} of {first.path} ({how})", older=older, at_position=offset == resume.offset)


def _matches_at(f: FollowedFile, resume: Cursor, max_line_bytes: int) -> bool:
    identity = resume.identity
    if identity is None or identity.fingerprint_len == 0:
        return False
    if f.size() < resume.offset or not fingerprint_matches(f.fd, identity):
        return False
    if resume.offset == 0:
        return True
    if resume.last_line_sha256 is None:
        return False
    return line_ends_at(f.fd, resume.offset, resume.last_line_sha256, resume.last_line_length, max_line_bytes)


def _find_v1(candidates: list[FollowedFile], resume: Cursor, max_line_bytes: int) -> tuple[int | None, int, str]:
    identity = resume.identity
    if identity is not None:
        for i, f in enumerate(candidates):
            if identity.same_inode(os.fstat(f.fd)) and _matches_at(f, resume, max_line_bytes):
                return i, resume.offset, "the checkpoint's own file"
        for i, f in enumerate(candidates):
            if _matches_at(f, resume, max_line_bytes):
                return i, resume.offset, "rotated copy with the same first bytes and last line"
    if resume.last_line_sha256 is not None:
        for i, f in enumerate(candidates):
            found = find_line_end(f.fd, resume.last_line_sha256, max_line_bytes)
            if found is not None:
                return i, found[0], "found by the last delivered line's hash"
    return None, 0, ""
