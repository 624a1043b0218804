"""Rotated copies of the audit log: the files matching `source.rotated_glob`, oldest first.

Only uncompressed files are candidates (a `.gz` cannot be read at an offset), and the
producer's `audit.jsonl.tmp` is skipped: it is the next version of the file, not an old one.
Order: logrotate's numbered names (`.1` is the newest) when every name is numbered, else
modification time (ties broken by name).

A listing is taken name by name (the directory, then a stat of each name), so a rotation that
shifts the names while it runs can show one file twice and another not at all; and a file opened
by a listed name may be the one shifted into it since. So a listing is repeated until two in a
row agree, and an open that finds another file than the one listed starts again
(`open_siblings`): a producer's rotation takes well under a millisecond, and rotations are far
apart, so the second try nearly always agrees.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from audit_otlp.source.followed import FollowedFile, open_followed

log = logging.getLogger(__name__)

COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".z", ".Z", ".zip", ".br")
NOT_ROTATED = (".tmp", ".swp", ".part")
_NUMBER = re.compile(r"\.(\d+)$")
SCAN_ATTEMPTS = 50  # listings (or opens) that disagree before the last one is taken as it is
SCAN_PAUSE = 0.002  # seconds between two attempts: lets a rotation in progress finish


@dataclass(frozen=True)
class Sibling:
    path: Path
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @property
    def number(self) -> int | None:
        m = _NUMBER.search(self.path.name)
        return int(m.group(1)) if m else None


def rotated_siblings(pattern: str, current: Path) -> list[Sibling]:
    """Regular, uncompressed files matching `pattern`, other than `current`, oldest first: a
    listing that the one after it agreed with (blocking)."""
    listing = _listing(pattern, current)
    for _ in range(SCAN_ATTEMPTS):
        again = _listing(pattern, current)
        if _names(again) == _names(listing):
            return again
        listing = again
        time.sleep(SCAN_PAUSE)
    log.warning("the files matching %s kept changing while they were listed; taking the last listing", pattern)
    return listing


def open_siblings(
    pattern: str, current: Path, max_line_bytes: int, wanted: Callable[[Sibling], bool] = lambda s: True
) -> list[tuple[Sibling, FollowedFile]]:
    """The `wanted` siblings opened, oldest first, each the very file its listing saw (blocking).
    One whose name holds another file by the time it is opened (or no file) means the names
    moved: everything is closed and listed again."""
    opened: list[tuple[Sibling, FollowedFile]] = []
    for attempt in range(SCAN_ATTEMPTS):
        opened, moved = [], False
        for sibling in rotated_siblings(pattern, current):
            if not wanted(sibling):
                continue
            try:
                followed = open_followed(sibling.path, max_line_bytes)
            except FileNotFoundError:  # renamed away since the listing
                moved = True
                break
            except OSError:  # unreadable: not ours to read, as before the names moved
                continue
            if followed.inode != (sibling.dev, sibling.ino):
                followed.close()
                moved = True
                break
            opened.append((sibling, followed))
        if not moved:
            return opened
        if attempt == SCAN_ATTEMPTS - 1:
            break
        for _, followed in opened:
            followed.close()
        time.sleep(SCAN_PAUSE)
    log.warning("the files matching %s kept moving while they were opened; taking what the last look found", pattern)
    return opened


def _names(listing: list[Sibling]) -> set[tuple[Path, int, int]]:
    """What must agree between two listings: which file each name holds (sizes and times may
    change: a hook that still holds a rotated file may append to it)."""
    return {(s.path, s.dev, s.ino) for s in listing}


def _listing(pattern: str, current: Path) -> list[Sibling]:
    found: list[Sibling] = []
    for name in glob.glob(pattern):
        path = Path(name)
        if path == current or name.endswith(COMPRESSED) or name.endswith(NOT_ROTATED):
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not os.path.isfile(path):
            continue
        found.append(Sibling(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    # Oldest first by modification time: a rotated file is not written after its rotation, so
    # this holds for every naming scheme (logrotate's .1-is-newest, dateext, or counting up).
    # Rotations within one tick of the kernel's coarse clock tie; logrotate's numbering (a
    # higher number is older) breaks the tie, then the name.
    found.sort(key=lambda s: (s.mtime_ns, -(s.number or 0), s.path.name))
    return found
