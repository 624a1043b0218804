"""Where to continue after a restart: every version of the file the checkpoint held or queued is
looked for, whatever its name is now, and read oldest first (docs/rotation.md, "Restart").

The checkpoint (`SourceState`) lists the versions, oldest first, each with its identity (device,
inode, fingerprint of its first KiB), the size last seen, where reading it starts (or unresolved)
and its spool file; one of them holds the position (the oldest undelivered row). A version is
found, in order of preference:
1. the same inode, still beginning with the same bytes and at least as long as it was (for the
   position's version: the delivered line still ends at the offset);
2. another file with the same first bytes and length (for the position: the same line at the
   offset): a copytruncate copy;
3. its spool file (it vanished while the daemon held it; the spool keeps its offsets).
Then come the files newer than every listed version that no checkpoint knew (rotated while the
daemon was stopped), then the current file; each unresolved one skips the lines it repeats from
the lines delivered before it (the checkpoint's recent lines, then what is read in this run).
When the position's version is gone, reading continues at the next surviving version: if its
first lines repeat the last delivered ones, nothing was lost; otherwise the rows between are a
real gap, reported once (`Located.gap`) and marked on the first row after it. A version 1
checkpoint has no versions list: the position's file is searched for by identity, then by the
last delivered line's hash, as version 1 did.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from audit_otlp.source.fileid import FileIdentity, fingerprint_matches
from audit_otlp.source.followed import FollowedFile, find_line_end, line_ends_at, open_followed, scan_lines
from audit_otlp.source.lines import LineSplitter
from audit_otlp.source.recent import RecentLines, overlap_end, prime
from audit_otlp.source.siblings import rotated_siblings
from audit_otlp.source.spool import Spool, SpoolRecord
from audit_otlp.state.checkpoint import Cursor, SourceState, VersionState


@dataclass
class Located:
    files: list[FollowedFile]  # the first starts at the resume point; the others at their start or after their overlap
    how: str  # for the log line
    gap: str | None = None  # the rows before files[0]'s first row vanished unseen (to report)
    older: list[FileIdentity] = field(default_factory=list)  # files before the resume point: done


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
            files.append(open_followed(sibling.path, max_line_bytes))
        except OSError:
            continue
    if current is not None:
        files.append(current)
    return files


def locate(
    path: Path, pattern: str, state: SourceState, max_line_bytes: int, recent: RecentLines, spool: Spool | None = None
) -> Located | None:
    """The files to read, in order, from the checkpoint's position on (blocking; run it in a
    thread). None when there is nothing to look in yet (no current file, nothing found)."""
    recent.seed(state.recent)
    candidates = open_candidates(path, pattern, max_line_bytes)
    if state.versions:
        located = _locate_versions(path, list(candidates), state, max_line_bytes, recent, spool)
    else:
        located = _locate_v1(path, candidates, state.position, max_line_bytes, recent)
    if located is None:
        for f in candidates:
            f.close()
    return located


# -- version 2: the versions list ---------------------------------------------------------------


class _Vanished:
    """Listed versions that are gone: certainly with undelivered rows, or possibly (the newest
    version, fully delivered when last seen, may have grown before it vanished)."""

    def __init__(self) -> None:
        self.what: list[str] = []
        self.certain = False

    def add(self, what: str, certain: bool) -> None:
        self.what.append(what)
        self.certain |= certain

    def hand_to(self, f: FollowedFile) -> None:
        """`f` is the next surviving version: the gap, if any, is decided when it is reached."""
        if self.what:
            f.gap_if_new = "; ".join(self.what)
            f.gap_certain = self.certain
            self.what, self.certain = [], False


def _locate_versions(
    path: Path, pool: list[FollowedFile], state: SourceState, max_line_bytes: int, recent: RecentLines, spool: Spool | None
) -> Located | None:
    position = state.position
    records = {r.identity: r for r in (spool.scan() if spool is not None else [])}
    for v in state.versions:
        if v.spool is not None and spool is not None:
            spool.adopt(v.spool)
            records[v.identity] = v.spool
    chain: list[FollowedFile] = []
    vanished = _Vanished()
    how = ""
    listed = {(v.identity.dev, v.identity.ino) for v in state.versions}
    for i, v in enumerate(state.versions):
        at = position if i == state.position_index else None
        found, found_how = _find_version(v, pool, records.get(v.identity), spool, at, max_line_bytes, listed)
        if found is None:
            start = position.offset if at is not None else (v.start if v.start is not None else 0)
            if start < v.size:
                vanished.add(f"{v.path} ({v.identity.short}, {v.size - start} bytes not delivered)", True)
            elif i == len(state.versions) - 1:
                vanished.add(f"{v.path} ({v.identity.short}, delivered up to its last seen size)", False)
            continue
        found.start_offset = v.start
        if at is not None:
            found.position_at(position.offset)
            found.lines_before = position.line_number
            how = f"{found_how}: {found.path} at byte {position.offset}"
        elif v.start is not None and not vanished.what:
            found.position_at(v.start)
        else:
            found.start_known = False  # resolved against what was delivered (and read) before it
        vanished.hand_to(found)
        chain.append(found)
    older = _add_unlisted(path, pool, state, chain, vanished)
    if not chain:
        return None
    first = chain[0]
    gap = None
    if first.gap_if_new is not None:
        if not first.start_known:
            offset, skipped = overlap_end(first.fd, max_line_bytes, recent)
            first.position_at(offset)
            first.lines_before = skipped
            first.start_known = True
            if skipped:
                first.gap_if_new = None  # it repeats the last delivered lines: nothing vanished
        if first.gap_if_new is not None and (first.gap_certain or _breaks_chain(first, position.chain_last_hash, max_line_bytes)):
            gap = f"gone with rows not delivered: {first.gap_if_new}; continuing at {first.path} byte {first.read_offset}"
            first.gap_before = gap
        first.gap_if_new = None
        how = f"the next surviving version, {first.path} at byte {first.read_offset}"
    elif not how:
        how = f"{first.path} (the position's version was read and delivered to its end)"
    for later in chain[1:]:
        if not later.gap_certain:
            later.gap_if_new = None  # only a certain loss is a gap there (the chain cannot be checked yet)
    if state.gap_pending is not None and first.gap_before is None and state.position_index is not None:
        first.gap_before, first.gap_reported = state.gap_pending, True  # reported before a restart
    return Located(chain, how, gap, older)


def _add_unlisted(
    path: Path, pool: list[FollowedFile], state: SourceState, chain: list[FollowedFile], vanished: _Vanished
) -> list[FileIdentity]:
    """Files no checkpoint knew: versions made while the daemon was stopped (newer than every
    listed one) go after the listed ones, and the path's file last, whatever it is. The rest
    (finished before the checkpoint, or copies of a listed version) are closed; returned."""
    threshold = max(v.mtime_ns for v in state.versions)
    known = {(i.dev, i.ino, i.fingerprint) for i in state.released}
    copies = {v.identity.fingerprint for v in state.versions if v.identity.fingerprint_len}
    current = next((f for f in [*chain, *pool] if f.path == path), None)
    older: list[FileIdentity] = []
    for f in pool:
        if f is current:
            continue
        key = (f.identity.dev, f.identity.ino, f.identity.fingerprint)
        if key in known or f.identity.fingerprint in copies or os.fstat(f.fd).st_mtime_ns < threshold:
            older.append(f.identity)
            f.close()
            continue
        f.start_known = False  # rotated while the daemon was stopped: may repeat lines
        vanished.hand_to(f)
        chain.append(f)
    if current is not None:
        if current in chain:
            chain.remove(current)  # a listed version still at the path: read last, as it was
        else:
            current.start_known = False  # new at the path while the daemon was stopped
            vanished.hand_to(current)
        chain.append(current)
    return older


def _breaks_chain(f: FollowedFile, last_hash: str | None, max_line_bytes: int) -> bool:
    """Does the first row from `f`'s read position name a parent other than the last delivered
    row? (Evidence that rows were lost when only "may have grown" is known.) False when unknown."""
    if last_hash is None:
        return False
    for line in scan_lines(f.fd, max_line_bytes, f.read_offset):
        if line.data is None or not line.data.strip():
            continue
        try:
            row = orjson.loads(line.data)
        except orjson.JSONDecodeError:
            return False
        prev = row.get("prev_hash") if isinstance(row, dict) else None
        return isinstance(prev, str) and prev != last_hash
    return False


def _find_version(
    v: VersionState,
    pool: list[FollowedFile],
    record: SpoolRecord | None,
    spool: Spool | None,
    at: Cursor | None,
    max_line_bytes: int,
    listed: set[tuple[int, int]],
) -> tuple[FollowedFile | None, str]:
    """The file holding version `v` (removed from `pool`), and how it was found. A copy is never
    a file that is itself one of the `listed` versions (a tail-rewrite may start like its parent)."""
    for f in pool:
        if v.identity.same_inode(os.fstat(f.fd)) and _holds(f, v, at, max_line_bytes):
            pool.remove(f)
            return f, "same file"
    for f in pool:
        if (f.identity.dev, f.identity.ino) not in listed and _holds(f, v, at, max_line_bytes):
            pool.remove(f)
            f.appendable = False
            return f, "a rotated copy with the same first bytes"
    if record is not None and spool is not None and (at is None or record.start <= at.offset <= record.end):
        try:
            fd = spool.open(record)
        except OSError:
            return None, ""
        splitter = LineSplitter(max_line_bytes, record.start)
        followed = FollowedFile(Path(spool.directory / record.name), fd, v.identity, splitter, record.start)
        followed.seen_size, followed.appendable, followed.spool = record.end, False, record
        followed.position_at(record.start)
        return followed, "its spool file"
    return None, ""


def _holds(f: FollowedFile, v: VersionState, at: Cursor | None, max_line_bytes: int) -> bool:
    """Does `f` still hold version `v` (for the position: the delivered line ends at the offset)?"""
    if v.identity.fingerprint_len == 0:
        return v.identity.same_inode(os.fstat(f.fd)) and f.size() >= (at.offset if at else 0)
    if not fingerprint_matches(f.fd, v.identity) or f.size() < v.size:
        return False
    if at is None or at.offset == 0 or at.last_line_sha256 is None:
        return True
    return line_ends_at(f.fd, at.offset, at.last_line_sha256, at.last_line_length, max_line_bytes)


# -- version 1: one cursor ------------------------------------------------------------------------


def _locate_v1(
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
    return Located(chain, f"{how}: {first.path} at byte {offset}", older=older)


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
