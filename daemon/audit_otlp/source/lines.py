"""Split a byte stream into complete lines, in bounded memory.

An incomplete last line is held until its newline arrives (never flushed on a timer, which is
how otelcol #32170 split slow writes). A line longer than the limit is not kept: only its
length and SHA-256 are, so a 2 GiB line costs no more memory than a short one.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple


class Line(NamedTuple):
    offset: int  # byte offset of the line's first byte in its file
    end: int  # byte offset just after its newline
    data: bytes | None  # the line without its newline; None when it exceeded the limit
    oversize_sha256: bytes | None = None  # the digest of an oversize line (data is None)

    @property
    def length(self) -> int:
        return self.end - self.offset - 1

    @property
    def digest(self) -> bytes:
        """SHA-256 of the line's content (what the checkpoint and overlap searches compare)."""
        if self.data is None:
            return self.oversize_sha256 or b"\0" * 32
        return hashlib.sha256(self.data).digest()


class LineSplitter:
    """Feed chunks read from `start_offset` on; get back the complete lines they finish."""

    def __init__(self, max_line_bytes: int, start_offset: int = 0) -> None:
        self.max_line_bytes = max_line_bytes
        self._pending: list[bytes] = []  # pieces of the incomplete line (bounded by the limit)
        self._pending_len = 0
        self._pending_offset = start_offset
        self._oversize: "hashlib._Hash | None" = None  # set while skipping an oversize line

    @property
    def pending_offset(self) -> int:
        """Offset of the first byte not yet returned as part of a complete line."""
        return self._pending_offset

    @property
    def pending_bytes(self) -> int:
        return self._pending_len

    def pending_data(self) -> bytes | None:
        """The held partial line (None when there is none or it is already over the limit)."""
        if self._pending_len == 0 or self._oversize is not None:
            return None
        return b"".join(self._pending)

    def feed(self, chunk: bytes) -> list[Line]:
        lines: list[Line] = []
        if not chunk:
            return lines
        pieces = chunk.split(b"\n")
        last = pieces.pop()  # the text after the final newline: incomplete (may be b"")
        for piece in pieces:
            lines.append(self._complete(piece))
        self._hold(last)
        return lines

    def _complete(self, piece: bytes) -> Line:
        start = self._pending_offset
        if self._oversize is not None:
            self._oversize.update(piece)
            length = self._pending_len + len(piece)
            digest = self._oversize.digest()
            self._oversize = None
            line = Line(start, start + length + 1, None, digest)
        else:
            if self._pending:
                self._pending.append(piece)
                data = b"".join(self._pending)
            else:
                data = piece
            if len(data) > self.max_line_bytes:
                line = Line(start, start + len(data) + 1, None, hashlib.sha256(data).digest())
            else:
                line = Line(start, start + len(data) + 1, data)
        self._pending = []
        self._pending_len = 0
        self._pending_offset = line.end
        return line

    def _hold(self, piece: bytes) -> None:
        if not piece:
            return
        if self._oversize is not None:
            self._oversize.update(piece)
        else:
            self._pending.append(piece)
            if self._pending_len + len(piece) > self.max_line_bytes:
                self._oversize = hashlib.sha256()
                for held in self._pending:
                    self._oversize.update(held)
                self._pending = []
        self._pending_len += len(piece)

    def take_unterminated(self) -> Line | None:
        """The held partial line as a final line, for a file that will never grow again."""
        if self._pending_len == 0:
            return None
        start = self._pending_offset
        if self._oversize is not None:
            line = Line(start, start + self._pending_len, None, self._oversize.digest())
        else:
            data = b"".join(self._pending)
            line = Line(start, start + len(data), data)
        # `end` has no newline to skip here; the line is what remains of the file.
        self._pending, self._pending_len, self._oversize = [], 0, None
        self._pending_offset = line.end
        return line
