"""The spool: a vanished version's undelivered bytes, kept at their original offsets, bounded,
found again by name; and the tailer reading from it after a restart (in-process, real files)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from audit_otlp.source.fileid import fingerprint_matches, identify_fd
from audit_otlp.source.followed import line_ends_at
from audit_otlp.source.spool import Spool, SpoolError, parse_name
from tests.helpers.auditgen import AuditWriter
from tests.helpers.rotation import rotate
from tests.helpers.tailer_reader import Reader, RecordingEvents, sha

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


# -- no window between "rotation noticed" and "vanished bytes spooled" ----------------------------


@dataclass
class SpoolSeenAtRotation(RecordingEvents):
    """Records, at the moment each rotation is reported, what the spool holds on disk: the daemon
    counts and logs a rotation there, and a SIGKILL may come right after."""

    spool_dir: Path = Path()
    at_rotation: list[dict[str, bytes]] = field(default_factory=list)
    errors_at_rotation: list[int] = field(default_factory=list)

    def rotation(self, kind: str, path: Path) -> None:
        super().rotation(kind, path)
        self.at_rotation.append({p.name: p.read_bytes() for p in self.spool_dir.glob("*.spool")})
        self.errors_at_rotation.append(len(self.spool_errors))


async def read_ahead(reader: Reader) -> list[int]:
    """Read to the end without delivering (the collector is away): the seqs of the rows handed
    out, which stay undelivered."""
    assert reader.tailer is not None
    seqs: list[int] = []
    while (chunk := await reader.tailer.read(0.0)) is not None:
        seqs += [orjson.loads(line.data)["seq"] for line in chunk.lines if line.data]
    return seqs


def stop_monitor(reader: Reader) -> None:
    """Only the reader looks at the path from now on (the monitor task would race it)."""
    assert reader.tailer is not None and reader.tailer._monitor_task is not None
    reader.tailer._monitor_task.cancel()


async def test_a_tail_rewrite_the_reader_notices_is_reported_only_once_its_undelivered_rows_are_spooled(
    tmp_path: Path,
) -> None:
    """The reader's own read (not the monitor) notices the tail-rewrite of a version whose rows
    6-55 were read but not delivered: when the rotation is reported the spool already holds them
    on disk, so a SIGKILL at that moment loses nothing."""
    log, spool_dir = tmp_path / "audit.jsonl", tmp_path / "spool"
    writer = AuditWriter(log)
    writer.append(5)
    reader = Reader(log, spool_dir=spool_dir, events=SpoolSeenAtRotation(spool_dir=spool_dir))
    await reader.start()
    await reader.drain()
    stop_monitor(reader)
    writer.append(50)
    await read_ahead(reader)
    undelivered = log.read_bytes()[reader.position.offset if reader.position else 0 :]
    rotate(log, "tail_rewrite", keep_lines=10)
    writer.append(5)
    await read_ahead(reader)  # the read at the end of the file finds a new inode at the path
    events = reader.events
    assert isinstance(events, SpoolSeenAtRotation)
    assert events.rotations == ["rename"]
    (kept,) = events.at_rotation[0].values()  # spooled (and on disk) before the rotation was reported
    assert kept.endswith(undelivered)
    await reader.crash()  # the SIGKILL right after the rotation was reported
    await reader.drain()
    assert reader.seqs == list(range(1, 61)) and reader.events.gaps == []
    await reader.stop()


async def test_a_tail_rewrite_the_monitor_notices_is_reported_only_once_its_undelivered_rows_are_spooled(
    tmp_path: Path,
) -> None:
    """The same when the monitor's look notices it (the reader held back, nothing read)."""
    log, spool_dir = tmp_path / "audit.jsonl", tmp_path / "spool"
    writer = AuditWriter(log)
    writer.append(5)
    reader = Reader(log, spool_dir=spool_dir, events=SpoolSeenAtRotation(spool_dir=spool_dir))
    await reader.start()
    await reader.drain()
    writer.append(50)
    rotate(log, "tail_rewrite", keep_lines=10)
    await reader.tick()
    events = reader.events
    assert isinstance(events, SpoolSeenAtRotation)
    assert events.rotations == ["rename"] and len(events.spools) == 1
    assert list(events.at_rotation[0]) == [events.spools[0].name]
    await reader.crash()
    await reader.drain()
    assert reader.seqs == list(range(1, 56)) and reader.events.gaps == []
    await reader.stop()


async def test_a_spool_failure_when_the_reader_notices_a_tail_rewrite_is_reported_first_and_reading_goes_on(
    tmp_path: Path,
) -> None:
    """The spool cannot be written (a file where its directory should be): the failure is
    reported before the rotation, the rows are still read from the open handle."""
    log, spool_dir = tmp_path / "audit.jsonl", tmp_path / "spool"
    spool_dir.write_text("not a directory")
    writer = AuditWriter(log)
    writer.append(5)
    reader = Reader(log, spool_dir=spool_dir, events=SpoolSeenAtRotation(spool_dir=spool_dir))
    await reader.start()
    await reader.drain()
    stop_monitor(reader)
    writer.append(50)
    read = await read_ahead(reader)
    rotate(log, "tail_rewrite", keep_lines=10)
    writer.append(5)
    read += await read_ahead(reader)  # notices it: the spool fails
    events = reader.events
    assert isinstance(events, SpoolSeenAtRotation)
    assert events.rotations == ["rename"] and events.errors_at_rotation == [1] and events.spools == []
    assert read == list(range(6, 61)) and events.gaps == []  # from the open handle, then the new file
    await reader.stop()


async def test_vanished_version_is_spooled_from_the_durable_position_not_the_delivered_one(tmp_path: Path) -> None:
    """Rows the collector acknowledged before the checkpoint naming them reached the disk: a
    SIGKILL resumes at the older checkpoint, so the spool of a version that vanishes meanwhile
    must hold them too (sent twice, which a kill allows), not start where delivery stood."""
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter(log)
    writer.append(20)
    reader = Reader(log, spool_dir=tmp_path / "spool")
    await reader.start()
    await reader.drain()
    on_disk = reader.resume  # the last durable checkpoint
    writer.append(30)
    await reader.drain(durable=False)  # acknowledged, the checkpoint write not done yet
    rotate(log, "tail_rewrite", keep_lines=10)  # rows 21-40 are now only in our handle
    writer.append(5)
    await reader.tick()
    assert len(reader.events.spools) == 1
    await reader.tailer.close()  # type: ignore[union-attr]  # SIGKILL
    reader.resume = on_disk
    await reader.start()
    await reader.drain()
    assert sorted(set(reader.seqs)) == list(range(1, 56))
    assert reader.events.gaps == []
    await reader.stop()
