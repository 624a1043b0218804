"""Which file is this: device + inode + a fingerprint of its first bytes.

The inode alone is not enough (inodes are reused after a delete), and the first bytes alone
are not either (two small files can share a first line, otelcol #10481): both are kept, and
resume decisions also check the hash of the last delivered line (see `resume.py`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

FINGERPRINT_BYTES = 1024


@dataclass(frozen=True)
class FileIdentity:
    dev: int
    ino: int
    fingerprint: str  # hex SHA-256 of the first `fingerprint_len` bytes
    fingerprint_len: int

    def same_inode(self, st: os.stat_result) -> bool:
        return st.st_dev == self.dev and st.st_ino == self.ino

    def to_json(self) -> dict[str, Any]:
        return {"dev": self.dev, "ino": self.ino, "fingerprint": self.fingerprint, "fingerprint_len": self.fingerprint_len}

    @classmethod
    def from_json(cls, data: Any) -> FileIdentity:
        return cls(int(data["dev"]), int(data["ino"]), str(data["fingerprint"]), int(data["fingerprint_len"]))

    @property
    def short(self) -> str:
        return f"{self.dev}:{self.ino}:{self.fingerprint[:12]}"


def read_head(fd: int, length: int = FINGERPRINT_BYTES) -> bytes:
    return os.pread(fd, length, 0)


def identify_fd(fd: int) -> FileIdentity:
    st = os.fstat(fd)
    head = read_head(fd)
    return FileIdentity(st.st_dev, st.st_ino, hashlib.sha256(head).hexdigest(), len(head))


def fingerprint_matches(fd: int, identity: FileIdentity) -> bool:
    """True when the file begins with the bytes `identity` was taken from."""
    head = os.pread(fd, identity.fingerprint_len, 0)
    return len(head) == identity.fingerprint_len and hashlib.sha256(head).hexdigest() == identity.fingerprint
