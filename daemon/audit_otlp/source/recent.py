"""The lines handed out last, in order: how a new file that repeats them is recognised.

The producer's tail-rewrite starts its new file with the old file's last 1000 lines. Those are
the lines read last, in the same order, so the overlap is found by matching the new file's first
lines against the end of this window: the longest run of leading lines equal to the window's
last lines is skipped (`overlap_end`); a run of two or more lines may also end a few lines
before the window's end (rows appended to the old file after the producer copied it). Matching
the end, in order, rather than "any line seen recently" means a new file whose first line merely equals some earlier line (identical rows
written in parallel, a blank line) is not taken for a rewrite: a wrong skip would lose rows,
a missed one only repeats them.

Each line also gets an index (lines handed out before it, over the whole run), so the window as
it stood at a delivery position can be cut out for the checkpoint (`before`): after a restart
the window is seeded from there and the overlap is skipped as if the daemon had never stopped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from audit_otlp.source.followed import scan_lines

RECENT_LINES = 4096  # lines kept for overlap matching (the producer keeps 1000)
KEY_BYTES = 16  # of each SHA-256
LATE_LINES = 64  # lines appended to the old file after the producer's copy, still matched


class RecentLines:
    """Digests (SHA-256[:16]) of the last `limit` lines handed out, oldest first."""

    def __init__(self, limit: int = RECENT_LINES) -> None:
        self._keys: deque[bytes] = deque(maxlen=limit)
        self.limit = limit
        self.next_index = 0  # index the next line gets

    def add(self, digest: bytes) -> None:
        self._keys.append(digest[:KEY_BYTES])
        self.next_index += 1

    def seed(self, digests: Iterable[bytes]) -> None:
        """Start from the lines a checkpoint says were delivered last (oldest first)."""
        for digest in digests:
            self.add(digest)

    def before(self, index: int, count: int) -> tuple[bytes, ...]:
        """The last `count` digests of the lines with an index below `index` (fewer when they
        are no longer held)."""
        first_held = self.next_index - len(self._keys)
        end = max(min(index, self.next_index) - first_held, 0)
        start = max(end - count, 0)
        return tuple(self._keys[i] for i in range(start, end))

    def __len__(self) -> int:
        return len(self._keys)

    def overlap(self, leading: list[bytes]) -> int:
        """How many of `leading` (a file's first line digests, in order) repeat what was read last:
        the longest run leading[:k] == window[p:p + k] that ends at the window's end, or at most
        LATE_LINES before it when it is at least two lines long (the producer's writers may append
        to the old file after `tail` copied it: those lines were read but are not in the copy).
        0 when the file is new. A single line equal to an earlier one is never taken for a copy."""
        if not self._keys or not leading:
            return 0
        keys = list(self._keys)
        lead = [d[:KEY_BYTES] for d in leading]
        first, n = lead[0], len(keys)
        best = 0
        for end in range(n, max(n - LATE_LINES, 0) - 1, -1):  # where the copied run ends in the window
            for p in range(max(end - len(lead), 0), end):  # smallest p first: the longest run
                k = end - p
                if k <= best or (k < 2 and end != n):
                    break
                if keys[p] == first and keys[p:end] == lead[:k]:
                    best = k
                    break
        return best


def overlap_end(fd: int, max_line_bytes: int, recent: RecentLines) -> tuple[int, int]:
    """(offset, lines) just after the file's leading lines that repeat the end of `recent`
    (blocking; run it in a thread). (0, 0) when the file is new."""
    if not len(recent):
        return 0, 0
    digests: list[bytes] = []
    ends: list[int] = []
    for line in scan_lines(fd, max_line_bytes):
        digests.append(line.digest)
        ends.append(line.end)
        if len(digests) >= len(recent):
            break
    k = recent.overlap(digests)
    return (ends[k - 1], k) if k else (0, 0)


def prime(fd: int, max_line_bytes: int, until: int, recent: RecentLines) -> int:
    """Feed `recent` with the lines before `until`; return how many there are."""
    count = 0
    for line in scan_lines(fd, max_line_bytes, 0, until):
        count += 1
        recent.add(line.digest)
    return count
