"""A tail-rewrite's repeated lines are matched in order, not by membership: the hydra producer
writes byte-identical lines, and a new one identical to a line just read must not be skipped."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from audit_otlp.source.recent import RecentLines, overlap_end


def overlap(tmp_path: Path, read: list[bytes], new_file: list[bytes]) -> int:
    recent = RecentLines()
    for line in read:
        recent.add(hashlib.sha256(line).digest())
    path = tmp_path / "new.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in new_file))
    fd = os.open(path, os.O_RDONLY)
    try:
        return overlap_end(fd, 1 << 20, recent)[1]
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "name, read, new_file, skipped",
    [
        ("the last lines repeated, then new ones", [b"a", b"b", b"c", b"d"], [b"c", b"d", b"e"], 2),
        ("a new line identical to one just read is new", [b"a", b"t", b"c", b"t"], [b"c", b"t", b"t"], 2),
        ("a new file starting with the last line read: its copy", [b"a", b"t"], [b"t", b"x"], 1),
        ("a new file of lines never read", [b"a", b"b"], [b"x", b"y"], 0),
        ("a line read but not copied (appended after the copy)", [b"a", b"b", b"c", b"late"], [b"b", b"c", b"new"], 2),
        ("identical runs: the longest match wins", [b"t", b"t", b"u", b"t", b"t"], [b"t", b"t", b"t"], 2),
    ],
)
def test_overlap_is_a_run_of_what_was_read(
    tmp_path: Path, name: str, read: list[bytes], new_file: list[bytes], skipped: int
) -> None:
    assert overlap(tmp_path, read, new_file) == skipped
