"""Rotated copies of the audit log: the files matching `source.rotated_glob`, oldest first.

Only uncompressed files are candidates (a `.gz` cannot be read at an offset), and the
producer's `audit.jsonl.tmp` is skipped: it is the next version of the file, not an old one.
Order: logrotate's numbered names (`.1` is the newest) when every name is numbered, else
modification time (ties broken by name).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".z", ".Z", ".zip", ".br")
NOT_ROTATED = (".tmp", ".swp", ".part")
_NUMBER = re.compile(r"\.(\d+)$")


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
    """Regular, uncompressed files matching `pattern`, other than `current`, oldest first."""
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
