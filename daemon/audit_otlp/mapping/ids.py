"""Span and trace ids derived from content, never from time or randomness: the same row always
gives the same ids, so a span delivered twice after a crash is recognisably the same span.

Byte-identical lines (two identical parallel tool calls in one second) must still get distinct
span ids, or a backend that de-duplicates on ids drops all but one: a line's span id comes from
its digest and how many identical lines precede it among the last IDENTICAL_WINDOW lines. That
count is the same on every replay, restart and rotation as long as the window is carried over
(the checkpoint keeps it), and is 0 for a line without twins, whose id is then what it always was.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass(frozen=True)
class MappingOptions:
    trace_id_from: str = "prev_hash"  # or "session"


def nonzero_hex(raw: bytes) -> str:
    if not any(raw):  # all-zero ids are invalid in OTLP and W3C
        raw = raw[:-1] + b"\x01"
    return raw.hex()


def line_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# Identical lines share a second (and a parent, when they have one), so they are close together;
# rows without prev_hash (egress-shield's) written in a burst can be a few hundred lines apart.
IDENTICAL_WINDOW = 1000
CARRIED_DIGEST_BYTES = 8  # of each line digest, kept and carried in the checkpoint: enough to tell 1000 lines apart


class IdentityWindow:
    """The digests of the last IDENTICAL_WINDOW lines, to count a line's identical predecessors."""

    def __init__(self, carried: Iterable[bytes] = ()) -> None:
        # Each line's digest prefix as hex, oldest first: the checkpoint carries them as hex,
        # and a cursor is taken per chunk and per batch (in live mode, every few lines), so
        # each is hexed once as it is pushed. The one at index i is line number
        # pushed - len + 1 + i (lines are counted consecutively: the numbers need not be kept).
        self._order: deque[str] = deque()
        self._counts: Counter[str] = Counter()
        self.pushed = 0  # lines counted so far
        for key in carried:
            self._push(key[:CARRIED_DIGEST_BYTES].hex())

    def _push(self, key: str) -> None:
        self.pushed += 1
        order = self._order
        order.append(key)
        self._counts[key] += 1
        if len(order) > IDENTICAL_WINDOW:
            old = order.popleft()
            left = self._counts[old] - 1
            if left:
                self._counts[old] = left
            else:
                del self._counts[old]

    def occurrence(self, digest: bytes) -> int:
        """How many lines identical to this one came just before it; then count this one."""
        key = digest[:CARRIED_DIGEST_BYTES].hex()
        seen = self._counts.get(key, 0)
        self._push(key)
        return seen

    def carried(self, upto: int | None = None) -> tuple[str, ...]:
        """The window as it stood after line `upto` (counted by `pushed`), hex, for the checkpoint."""
        order = self._order
        if upto is None or upto >= self.pushed:
            return tuple(order)
        return tuple(islice(order, max(upto - (self.pushed - len(order)), 0)))


def span_id_for(digest: bytes, occurrence: int = 0) -> str:
    if occurrence:
        return nonzero_hex(hashlib.sha256(b"occurrence:%d:" % occurrence + digest).digest()[:8])
    return nonzero_hex(digest[:8])


def trace_id_for(row: Mapping[str, Any], digest: bytes, options: MappingOptions, own_hash: str | None = None) -> str:
    own = row.get("trace_id")
    if isinstance(own, str) and _HEX32.match(own) and own.strip("0"):
        return own.lower()
    if options.trace_id_from == "session":
        session = row.get("session_id")
        if isinstance(session, str) and session:
            return _session_trace_id(session)
    prev = row.get("prev_hash")
    if prev == "GENESIS":
        # Every chain starts with GENESIS: a trace of its own, from the row's own hash (keyed,
        # when the chain is), not one shared by every chain's first row on every host.
        seed = own_hash.encode("ascii") if own_hash else digest
        return nonzero_hex(hashlib.sha256(b"genesis:" + seed).digest()[:16])
    if isinstance(prev, str) and prev:
        return nonzero_hex(hashlib.sha256(b"prev_hash:" + prev.encode("utf-8", "replace")).digest()[:16])
    return nonzero_hex(digest[8:24])


@functools.lru_cache(maxsize=256)
def _session_trace_id(session: str) -> str:
    # A session spans many rows in a row: hash it once (a pure function of the session).
    return nonzero_hex(hashlib.sha256(b"session:" + session.encode("utf-8", "replace")).digest()[:16])
