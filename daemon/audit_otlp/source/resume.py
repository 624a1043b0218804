"""Where to continue after a restart: the checkpoint's file may have been rotated (several times,
any style) while the daemon was stopped.

The checkpoint names a file (device, inode, fingerprint of its first bytes), an offset, and the
SHA-256 and length of the last delivered line. The candidates are the current file and the
uncompressed rotated siblings, oldest first. In order of preference:
1. the same inode with the same fingerprint, and the line ending at the offset still hashes to
   the delivered line (the file was only appended to, or renamed);
2. another file with the same fingerprint and the same line at the offset (a copytruncate copy);
3. the oldest file holding a line with that hash anywhere (a tail-rewrite moved the line).
Reading continues there, then through every newer sibling in order, then the current file; each
later file skips the lines it repeats from the one before (a tail-rewrite's overlap). Nothing
found: a resume gap, said loudly by the caller, and the current file is read from its start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from audit_otlp.source.fileid import FileIdentity, fingerprint_matches
from audit_otlp.source.followed import FollowedFile, RecentLines, find_line_end, line_ends_at, open_followed, prime
from audit_otlp.source.siblings import rotated_siblings


@dataclass(frozen=True)
class ResumePoint:
    """Where the checkpoint says to continue: just after a line of a known file."""

    identity: FileIdentity | None
    offset: int
    last_line_sha256: str | None = None  # hex digest of the line ending at `offset`
    last_line_length: int | None = None

    @property
    def says_nothing(self) -> bool:
        """Nothing was delivered yet: read the current file as if there were no checkpoint."""
        return not (self.offset or self.last_line_sha256 or self.identity)


@dataclass
class Located:
    files: list[FollowedFile]  # the first starts at the resume point; the others after their overlap
    how: str  # for the log line
    gap: str | None = None  # set when the resume point was not found
    older: list[FileIdentity] = field(default_factory=list)  # siblings before the resume point: done


def open_candidates(path: Path, pattern: str, max_line_bytes: int) -> list[FollowedFile]:
    """Rotated siblings (oldest first) and then the current file, each opened once."""
    files: list[FollowedFile] = []
    current: FollowedFile | None = None
    try:
        current = open_followed(path, max_line_bytes)
    except OSError:
        pass
    for sibling in rotated_siblings(pattern, path):
        if current is not None and (sibling.dev, sibling.ino) == (current.identity.dev, current.identity.ino):
            continue
        try:
            followed = open_followed(sibling.path, max_line_bytes)
        except OSError:
            continue
        files.append(followed)
    if current is not None:
        files.append(current)
    return files


def _matches_at(f: FollowedFile, resume: ResumePoint, max_line_bytes: int) -> bool:
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


def locate(path: Path, pattern: str, resume: ResumePoint, max_line_bytes: int, recent: RecentLines) -> Located | None:
    """The files to read, in order, from the resume point on (blocking; run it in a thread).
    None when there is nothing to look in yet (no current file, no sibling holds the point)."""
    candidates = open_candidates(path, pattern, max_line_bytes)
    index, offset, how = _find(candidates, resume, max_line_bytes)
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
        return Located(
            [current],
            "the start of the current file",
            older=older,
            gap=f"the last delivered line (sha256 {digest}...) is in none of {path} and its rotated siblings",
        )
    older = [f.identity for f in candidates[:index]]
    for f in candidates[:index]:
        f.close()
    chain = candidates[index:]
    first = chain[0]
    first.lines_before = prime(first.fd, max_line_bytes, offset, recent)
    first.position_at(offset)
    for later in chain[1:]:
        later.start_known = False
    return Located(chain, f"{how}: {first.path} at byte {offset}", older=older)


def _find(candidates: list[FollowedFile], resume: ResumePoint, max_line_bytes: int) -> tuple[int | None, int, str]:
    identity = resume.identity
    if identity is not None:
        for i, f in enumerate(candidates):
            st = os.fstat(f.fd)
            if identity.same_inode(st) and _matches_at(f, resume, max_line_bytes):
                return i, resume.offset, "same file"
        for i, f in enumerate(candidates):
            if _matches_at(f, resume, max_line_bytes):
                return i, resume.offset, "rotated copy with the same first bytes and last line"
    if resume.last_line_sha256 is not None:
        for i, f in enumerate(candidates):
            found = find_line_end(f.fd, resume.last_line_sha256, max_line_bytes)
            if found is not None:
                return i, found[0], "found by the last delivered line's hash"
    return None, 0, ""
