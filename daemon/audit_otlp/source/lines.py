"""Split a byte stream into complete lines, in bounded memory.

An incomplete last line is held until its newline arrives (never flushed on a timer, which is
how otelcol #32170 split slow writes). A line longer than the limit is not kept: only its
length and SHA-256 are, so a 2 GiB line costs no more memory than a short one. Every line is
hashed here, once.
"""

from __future__ import annotations

import hashlib

NO_DIGEST = b"\0" * 32  # the digest of a line whose content is unknown


class Line:
    """One complete line and its SHA-256, hashed once when it is split (the tailer's overlap
    memory, the checkpoint and the span ids all use this one digest)."""

    __slots__ = ("data", "digest", "end", "offset")

    def __init__(self, offset: int, end: int, data: bytes | None, digest: bytes | None = None) -> None:
        self.offset = offset  # byte offset of the line's first byte in its file
        self.end = end  # byte offset just after its newline
        self.data = data  # the line without its newline; None when it exceeded the limit
        if digest is None:
            digest = hashlib.sha256(data).digest() if data is not None else NO_DIGEST
        self.digest: bytes = digest  # SHA-256 of the line's content

    @property
    def length(self) -> int:
        return self.end - self.offset - 1

    @property
    def oversize_sha256(self) -> bytes | None:
        """The digest of an oversize line (whose data is not kept); None for a kept line."""
        return self.digest if self.data is None else None

    def __repr__(self) -> str:
        return f"Line(offset={self.offset}, end={self.end}, data={self.data!r}, digest={self.digest.hex()[:16]})"


class LineSplitter:
    """Feed chunks read from `start_offset` on; get back the complete lines they finish."""

    def __init__(self, max_line_bytes: int, start_offset: int = 0) -> None:
        self.max_line_bytes = max_line_bytes
        self._pending: list[bytes] = []  # pieces of the incomplete line (bounded by the limit)
        self._pending_len = 0
        self._pending_offset = start_offset
        self._oversize: hashlib._Hash | None = None  # set while skipping an oversize line

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
