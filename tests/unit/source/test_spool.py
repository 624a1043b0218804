"""The spool: a vanished version's undelivered bytes, kept at their original offsets, bounded,
found again by name; and the tailer reading from it after a restart (in-process, real files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from audit_otlp.source.fileid import fingerprint_matches, identify_fd
from audit_otlp.source.followed import line_ends_at
from audit_otlp.source.spool import Spool, SpoolError, parse_name
from tests.helpers.auditgen import AuditWriter
from tests.helpers.rotation import rotate
from tests.helpers.tailer_reader import Reader, sha

pytestmark = pytest.mark.timeout(60)


def version(tmp_path: Path, rows: int) -> tuple[int, list[bytes]]:
    path = tmp_path / "audit.jsonl"
    AuditWriter(path).append(rows)
    lines = path.read_bytes().splitlines(keepends=True)
    return os.open(path, os.O_RDONLY), lines


def test_spool_keeps_the_undelivered_bytes_at_their_offsets_and_reads_like_the_version(tmp_path: Path) -> None:
    fd, lines = version(tmp_path, 400)
    start = sum(len(line) for line in lines[:300])  # rows 1-300 delivered
    spool = Spool(tmp_path / "spool", 1 << 30)
    record = spool.keep(fd, identify_fd(fd), start)
    assert (record.start, record.end, record.size, record.cut_bytes) == (start, os.fstat(fd).st_size, os.fstat(fd).st_size, 0)
    kept = spool.open(record)
    try:
        assert fingerprint_matches(kept, identify_fd(fd))  # the first KiB is there
        assert line_ends_at(kept, start, sha(lines[299][:-1]), len(lines[299]) - 1, 1 << 20)  # and the line before
        assert os.pread(kept, os.fstat(fd).st_size - start, start) == b"".join(lines[300:])  # and every row after
        # Sparse: only what was kept takes room (on filesystems with holes).
        assert os.fstat(kept).st_blocks * 512 < os.fstat(kept).st_size
    finally:
        os.close(kept)
        os.close(fd)
    assert not list((tmp_path / "spool").glob(".*.tmp"))


def test_past_the_bound_the_oldest_bytes_are_kept_at_a_line_end_and_the_cut_is_counted_exactly(tmp_path: Path) -> None:
    fd, lines = version(tmp_path, 100)
    bound = sum(len(line) for line in lines[:40]) + 10  # room for 40 rows and a bit of the 41st
    record = Spool(tmp_path / "spool", bound).keep(fd, identify_fd(fd), 0)
    os.close(fd)
    assert record.end == sum(len(line) for line in lines[:40])
    assert record.cut_bytes == sum(len(line) for line in lines[40:]) and record.lines_cut == 60


def test_spool_files_are_found_again_by_name(tmp_path: Path) -> None:
    fd, _ = version(tmp_path, 50)
    identity = identify_fd(fd)
    record = Spool(tmp_path / "spool", 1 << 30).keep(fd, identity, 200)
    os.close(fd)
    (tmp_path / "spool" / ".half-written.spool.tmp").write_bytes(b"x")
    found = Spool(tmp_path / "spool", 1 << 30).scan()
    assert [(r.identity, r.start, r.end) for r in found] == [(identity, 200, record.end)]
    assert parse_name("not-a-spool-file", 10) is None


def test_a_spool_that_cannot_be_written_raises_and_leaves_nothing(tmp_path: Path) -> None:
    fd, _ = version(tmp_path, 10)
    (tmp_path / "spool").write_text("a file where the directory should be")
    with pytest.raises(SpoolError):
        Spool(tmp_path / "spool", 1 << 30).keep(fd, identify_fd(fd), 0)
    os.close(fd)


async def test_a_version_that_vanished_while_held_is_read_from_the_spool_after_a_crash(tmp_path: Path) -> None:
    """The collector is away (nothing read), the producer's tail-rewrite deletes the rows we hold:
    the spool has them, a crash does not lose them, and once delivered the spool file goes."""
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter(log)
    writer.append(5)
    reader = Reader(log, spool_dir=tmp_path / "spool")
    await reader.start()
    await reader.drain()
    writer.append(50)
    rotate(log, "tail_rewrite", keep_lines=10)
    writer.append(5)
    await reader.tick()  # the monitor: the old inode has link count 0
    assert len(reader.events.spools) == 1 and reader.events.spools[0].lines_cut == 0
    await reader.crash()
    await reader.drain()
    assert reader.seqs == list(range(1, 61)) and reader.events.gaps == []
    reader.checkpoint()  # a durable checkpoint without the spooled version: its file is deleted
    assert list((tmp_path / "spool").glob("*.spool")) == []
    await reader.stop()


async def test_rows_past_the_spool_bound_are_one_exact_gap_after_a_crash(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter(log)
    writer.append(5)
    reader = Reader(log, spool_dir=tmp_path / "spool", spool_max_bytes=20 * 200)
    await reader.start()
    await reader.drain()
    writer.append(50)  # rows 6-55, about 200 bytes each: only the oldest ~20 fit
    rotate(log, "tail_rewrite", keep_lines=10)  # rows 46-55 survive in the new file
    await reader.tick()
    (record,) = reader.events.spools
    assert record.cut_bytes > 0
    await reader.crash()
    await reader.drain()
    missing = set(range(1, 56)) - set(reader.seqs)
    first_missing = min(missing)
    assert missing == set(range(first_missing, 46)), sorted(missing)
    assert len(missing) == record.lines_cut - 10  # the cut lines, but the 10 the new file repeats
    assert len(reader.events.gaps) == 1 and "source.spool_max_bytes" in reader.events.gaps[0]
    assert reader.gap_rows == [46]  # the first row after the gap carries the mark
    await reader.stop()
