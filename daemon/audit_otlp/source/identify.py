"""Which file holds each version a checkpoint lists (for `resume.py`): the same inode still
beginning with its bytes and as long (for the version holding the position, the delivered line
still ends at the offset); else, newest version first, its spool file or a copy with those bytes.
An inode number alone proves nothing: an unlinked or empty version's number may be a new file's.
"""

from __future__ import annotations

import os
from pathlib import Path

from audit_otlp.source.fileid import fingerprint_matches
from audit_otlp.source.followed import FollowedFile, line_ends_at
from audit_otlp.source.lines import LineSplitter
from audit_otlp.source.spool import Spool, SpoolRecord
from audit_otlp.state.checkpoint import Cursor, SourceState, VersionState


def find_versions(
    path: Path,
    state: SourceState,
    pool: list[FollowedFile],
    records: dict[tuple[int, int], list[SpoolRecord]],
    spool: Spool | None,
    max_line_bytes: int,
) -> dict[int, tuple[FollowedFile, str]]:
    """The file holding each listed version (taken from `pool`), by index, and how it was found:
    first the same inodes; then, newest version first (a copytruncate copies the newest), its
    spool file or a copy. A copy is never a file that is itself a listed version (a tail-rewrite
    may start like its parent)."""
    position, index = state.position, state.position_index
    last = len(state.versions) - 1

    def is_listed(f: FollowedFile) -> bool:
        """`f` is itself one of the listed versions (its inode and first bytes), not a copy."""
        return any(
            w.linked
            and w.identity.fingerprint_len
            and w.identity.same_inode(os.fstat(f.fd))
            and fingerprint_matches(f.fd, w.identity)
            for w in state.versions
        )

    found: dict[int, tuple[FollowedFile, str]] = {}
    for i, v in enumerate(state.versions):
        at = position if i == index else None
        if v.identity.fingerprint_len == 0 or not v.linked:
            # Empty when last seen (nothing identifies it), or no name pointed to it (an unlinked
            # inode never comes back): a file with its inode number now is another file.
            continue
        # Only the newest listed version can still be the path's file: a file at the path that
        # looks like an older one (an inode number reused, an empty file) is new.
        usable = [f for f in pool if i == last or f.path != path]
        same = next((f for f in usable if v.identity.same_inode(os.fstat(f.fd)) and _holds(f, v, at, max_line_bytes)), None)
        if same is not None:
            pool.remove(same)
            found[i] = same, "the checkpoint's own file"
    for i in reversed(range(len(state.versions))):
        if i in found or not state.versions[i].identity.fingerprint_len:
            continue
        v, at = state.versions[i], position if i == index else None
        spooled = next(
            (f for r in records.get((v.identity.dev, v.identity.ino), []) if (f := _open_spool(v, r, spool, at, max_line_bytes))),
            None,
        )
        if spooled is not None:
            found[i] = spooled, "its spool file, the version having vanished"
            continue
        if not v.linked:
            continue  # unlinked when last seen: a copytruncate copies a file that still has a name
        copy = next(
            (f for f in pool if f.path != path and not is_listed(f) and _holds(f, v, at, max_line_bytes)),
            None,
        )
        if copy is not None:
            pool.remove(copy)
            copy.appendable = False
            found[i] = copy, "a rotated copy: same first bytes, same last delivered line"
    return found


def _open_spool(
    v: VersionState, record: SpoolRecord | None, spool: Spool | None, at: Cursor | None, max_line_bytes: int
) -> FollowedFile | None:
    if record is None or spool is None or (at is not None and not record.start <= at.offset <= record.end):
        return None
    try:
        fd = spool.open(record)
    except OSError:
        return None
    if not fingerprint_matches(fd, v.identity):
        os.close(fd)  # the same inode number, another version
        return None
    followed = FollowedFile(Path(spool.directory / record.name), fd, v.identity, LineSplitter(max_line_bytes, record.start), 0)
    followed.seen_size, followed.appendable, followed.spool = record.end, False, record
    followed.position_at(record.start)
    return followed


def _holds(f: FollowedFile, v: VersionState, at: Cursor | None, max_line_bytes: int) -> bool:
    """Does `f` still hold version `v` (for the position: the delivered line ends at the offset)?"""
    if v.identity.fingerprint_len == 0:
        return v.identity.same_inode(os.fstat(f.fd)) and f.size() >= (at.offset if at else 0)
    if not fingerprint_matches(f.fd, v.identity) or f.size() < v.size:
        return False
    if at is None or at.offset == 0 or at.last_line_sha256 is None:
        return True
    return line_ends_at(f.fd, at.offset, at.last_line_sha256, at.last_line_length, max_line_bytes)
