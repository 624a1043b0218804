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
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from audit_otlp.source.fileid import FileIdentity
from audit_otlp.source.followed import FollowedFile, first_line, open_followed
from audit_otlp.source.identify import find_versions
from audit_otlp.source.recent import RecentLines, overlap_end
from audit_otlp.source.resume_v1 import Located, locate_v1
from audit_otlp.source.siblings import SCAN_ATTEMPTS, SCAN_PAUSE, Sibling, open_siblings
from audit_otlp.source.spool import Spool, SpoolRecord
from audit_otlp.state.checkpoint import SourceState


def open_candidates(path: Path, pattern: str, max_line_bytes: int) -> list[FollowedFile]:
    """Rotated siblings (oldest first) and then the current file, each opened once: one
    consistent look, taken again while the producer rotates under it (the path's file replaced
    between its open and the siblings' listing would be missed, or taken twice)."""
    for attempt in range(SCAN_ATTEMPTS):
        current: FollowedFile | None = None
        try:
            current = open_followed(path, max_line_bytes)
        except OSError:
            pass
        at_path = None if current is None else current.inode
        siblings = open_siblings(pattern, path, max_line_bytes, _other_than(at_path))
        files = [f for _, f in siblings] + ([current] if current is not None else [])
        # The path's file still the one opened, and still holding what it held (a copytruncate
        # in between would leave its copy listed and the file emptied: two views of one moment).
        settled = _inode_at(path) == at_path and (current is None or current.unchanged())
        if settled or attempt == SCAN_ATTEMPTS - 1:
            return files
        for f in files:
            f.close()
        time.sleep(SCAN_PAUSE)
    return []


def _other_than(inode: tuple[int, int] | None) -> Callable[[Sibling], bool]:
    return lambda s: (s.dev, s.ino) != inode


def _inode_at(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


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
        located = locate_v1(path, candidates, state.position, max_line_bytes, recent)
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
    # Spool files by the vanished version's inode number (several versions may have had it, one
    # after the other): the one whose first bytes are the listed version's is its spool (a small
    # file's fingerprint may have grown since the checkpoint, so the bytes are compared).
    records: dict[tuple[int, int], list[SpoolRecord]] = {}
    listed_spools = [v.spool for v in state.versions if v.spool is not None]
    for r in [*(spool.scan() if spool is not None else []), *listed_spools]:
        same = records.setdefault((r.identity.dev, r.identity.ino), [])
        same[:] = [x for x in same if x.name != r.name] + [r]  # the checkpoint's record knows the cut
        if spool is not None and r in listed_spools:
            spool.adopt(r)
    chain: list[FollowedFile] = []
    vanished = _Vanished()
    how = ""
    found = find_versions(path, state, pool, records, spool, max_line_bytes)
    for i, v in enumerate(state.versions):
        at = position if i == state.position_index else None
        if i not in found:
            start = position.offset if at is not None else v.start
            if start is not None and start < v.size:
                vanished.add(f"{v.path} ({v.identity.short}, {v.size - start} bytes not delivered)", True)
            elif start is None or i == len(state.versions) - 1:
                # Not read yet (its overlap with the one before is unknown), or the newest
                # version, delivered when last seen but maybe grown since: the chain decides.
                vanished.add(f"{v.path} ({v.identity.short}, {v.size} bytes when last seen)", False)
            continue
        f, found_how = found[i]
        if v.gap_if_new is not None:  # still undecided when the checkpoint was written
            vanished.add(v.gap_if_new, v.gap_certain)
        f.start_offset = v.start
        if at is not None:
            f.position_at(position.offset)
            f.lines_before = position.line_number
            how = f"byte {position.offset} of {f.path} ({found_how})"
        elif v.start is not None and not vanished.what:
            f.position_at(v.start)
        else:
            f.start_known = False  # resolved against what was delivered (and read) before it
        vanished.hand_to(f)
        chain.append(f)
    older = _add_unlisted(path, pool, state, chain, vanished)
    if not chain:
        return None
    first = chain[0]
    at_position = bool(how)
    if not first.start_known:  # it is the head: skip the lines it repeats now (`status` counts from here)
        offset, skipped = overlap_end(first.fd, max_line_bytes, recent)
        first.position_at(offset)
        first.lines_before = skipped
        first.start_known = True
        if skipped:
            first.gap_if_new = None  # it repeats the last delivered lines: nothing vanished
    gap = None
    if first.gap_if_new is not None:
        links = _links(first, position.chain_last_hash, max_line_bytes)
        if is_gap(first.gap_certain, links):
            gap = f"gone with rows not delivered: {first.gap_if_new}; continuing at {first.path} byte {first.read_offset}"
            first.gap_before = gap
        if first.gap_certain or links is not None:
            first.gap_if_new = None  # decided; else its first row decides, once there is one
    if not how:
        how = f"byte {first.read_offset} of {first.path} (the next version: the position's was delivered to its end, or is gone)"
    if state.gap_pending is not None and first.gap_before is None and at_position:
        first.gap_before, first.gap_reported = state.gap_pending, True  # reported before a restart
    return Located(chain, how, gap, older, at_position)


def _add_unlisted(
    path: Path, pool: list[FollowedFile], state: SourceState, chain: list[FollowedFile], vanished: _Vanished
) -> list[FileIdentity]:
    """Files no checkpoint knew: versions made while the daemon was stopped (newer than every
    listed one) go after the listed ones, and the path's file last, whatever it is. The rest
    (finished before the checkpoint, or empty) are closed; returned."""
    threshold = max(v.mtime_ns for v in state.versions)
    known = {(i.dev, i.ino, i.fingerprint) for i in state.released}
    current = next((f for f in [*chain, *pool] if f.path == path), None)
    older: list[FileIdentity] = []
    for f in pool:
        if f is current:
            continue
        key = (f.identity.dev, f.identity.ino, f.identity.fingerprint)
        st = os.fstat(f.fd)
        # (A file beginning like a listed version is not taken for its copy: a tail-rewrite of a
        # file shorter than what the producer keeps begins with all of it and goes on. Its start
        # is resolved against what was read, so a real copy's lines are skipped, not sent twice.)
        if key in known or st.st_mtime_ns < threshold or st.st_size == 0:
            older.append(f.identity)
            f.close()
            continue
        _unseen(f, vanished)
        chain.append(f)
    if current is not None:
        if current in chain:
            chain.remove(current)  # a listed version still at the path: read last, as it was
        else:
            _unseen(current, vanished)
        chain.append(current)
    return older


def _unseen(f: FollowedFile, vanished: _Vanished) -> None:
    """`f` appeared while the daemon was stopped: it may repeat lines (a tail-rewrite), and a
    version before it that the daemon never saw may have come and gone; its first new row tells
    (a row that does not name the last row read as its parent: rows are missing)."""
    f.start_known = False
    vanished.hand_to(f)
    if f.gap_if_new is None:
        f.gap_if_new, f.gap_certain = "a version written and replaced while the daemon was stopped", False


def _links(f: FollowedFile, last_hash: str | None, max_line_bytes: int) -> bool | None:
    """Does the first row from `f`'s read position name the last delivered row as its parent?
    None when that cannot be told (no chain hash, no row, no prev_hash)."""
    data = first_line(f.fd, max_line_bytes, f.read_offset) if last_hash is not None else None
    if data is None:
        return None
    try:
        row = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    prev = row.get("prev_hash") if isinstance(row, dict) else None
    return prev == last_hash if isinstance(prev, str) and prev != "GENESIS" else None


def is_gap(certain: bool, links: bool | None) -> bool:
    """Rows vanished between the last one read and the next one: the chain says so when it can
    (a row naming its true parent proves nothing is missing), else only a certain loss counts."""
    return links is False or (links is None and certain)
