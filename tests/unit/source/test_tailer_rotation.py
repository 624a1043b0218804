"""The tailer in-process, on real files: every rotation style, live and across restarts, with the
reader keeping up or held back (collector down). Each test names the scenario it proves."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers.auditgen import AuditWriter, append_bytes
from tests.helpers.rotation import rotate
from tests.helpers.tailer_reader import Reader

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


async def started(log: Path, **kw: object) -> Reader:
    reader = Reader(log, **kw)  # type: ignore[arg-type]
    await reader.start()
    return reader


@pytest.mark.parametrize("style", ["rename", "tail_rewrite", "copytruncate", "delete"])
@pytest.mark.parametrize("behind", [False, True], ids=["caught_up", "behind"])
async def test_live_rotation_loses_and_repeats_nothing(log: Path, style: str, behind: bool) -> None:
    writer = AuditWriter(log)
    writer.append(20)
    reader = await started(log)
    await reader.drain()
    writer.append(15)  # unread when `behind`: must come from the old handle / the copy
    if not behind:
        await reader.drain()
    rotate(log, style, keep_lines=10)
    await reader.tick()
    writer.append(12)
    await reader.drain()
    assert reader.seqs == list(range(1, 48))
    assert reader.events.gaps == []
    await reader.stop()


async def test_tail_rewrite_resumes_after_last_line_by_content(log: Path) -> None:
    writer = AuditWriter(log)
    writer.append(50)
    reader = await started(log)
    await reader.drain()
    rotate(log, "tail_rewrite", keep_lines=30)  # the new file starts with 30 rows already read
    writer.append(5)
    await reader.drain()
    assert reader.seqs == list(range(1, 56))
    await reader.stop()


async def test_tail_rewrite_without_overlap_reads_from_start(log: Path) -> None:
    writer = AuditWriter(log)
    writer.append(10)
    reader = await started(log)
    await reader.drain()
    fresh = AuditWriter(log, seq=1000)
    tmp = log.with_name("audit.jsonl.tmp")
    tmp.write_bytes(fresh.lines(3))
    os.rename(tmp, log)
    await reader.drain()
    assert reader.seqs == list(range(1, 11)) + [1001, 1002, 1003]
    await reader.stop()


async def test_copytruncate_recovers_gap(log: Path) -> None:
    writer = AuditWriter(log)
    writer.append(10)
    reader = await started(log)
    await reader.drain()
    writer.append(25)  # written, copied, truncated before the reader saw them
    rotate(log, "copytruncate")
    writer.append(5)
    await reader.drain()
    assert reader.seqs == list(range(1, 41))
    assert "copytruncate" in reader.events.rotations and reader.events.gaps == []
    await reader.stop()


async def test_truncate_then_regrow_past_offset(log: Path) -> None:
    """Truncated and written again beyond our offset between two looks: size alone cannot tell."""
    writer = AuditWriter(log)
    writer.append(5)
    reader = await started(log)
    await reader.drain()
    writer.append(3)
    rotate(log, "copytruncate")
    writer.append(40)  # now far larger than the old offset
    await reader.drain()
    assert reader.seqs == list(range(1, 49))
    await reader.stop()


async def test_checkpoint_between_a_copytruncate_that_regrew_past_the_copy_and_the_next_look(log: Path) -> None:
    """A copytruncate, then the producer writes more than the copy holds, then a checkpoint and a
    crash, all before the tailer looks again (tests/torture/test_crash.py under load). The
    checkpoint must record the size the version reached, not the regrown inode's: else the copy,
    shorter than that, is refused at the restart and its unread rows are reported lost."""
    writer = AuditWriter(log)
    writer.append(10)
    reader = await started(log)
    await reader.drain()
    writer.append(25)  # rows 11-35: not read yet
    rotate(log, "copytruncate")  # audit.jsonl.1 holds rows 1-35
    writer.append(60)  # rows 36-95: the same inode, now longer than the copy
    assert log.stat().st_size > log.with_name("audit.jsonl.1").stat().st_size
    await reader.crash()  # the checkpoint written now, then the kill
    await reader.drain()
    assert reader.events.gaps == []
    assert reader.seqs == list(range(1, 96))
    await reader.stop()


async def test_truncation_without_copy_is_a_loud_gap(log: Path) -> None:
    writer = AuditWriter(log)
    writer.append(5)
    reader = await started(log)
    await reader.drain()
    writer.append(3)
    await reader.tick()  # the monitor saw the 3 unread rows, then they were truncated away
    os.truncate(log, 0)
    writer.append(2)
    await reader.drain()
    assert reader.seqs == [1, 2, 3, 4, 5, 9, 10]
    assert len(reader.events.gaps) == 1
    await reader.stop()


async def test_partial_line_is_never_flushed_and_survives_rename(log: Path) -> None:
    writer = AuditWriter(log)
    writer.append(3)
    line = writer.lines(1)
    append_bytes(log, line[:20])
    reader = await started(log)
    await reader.drain()
    assert reader.seqs == [1, 2, 3]
    append_bytes(log, line[20:])
    rotate(log, "rename")
    writer.append(2)
    await reader.drain()
    assert reader.seqs == [1, 2, 3, 4, 5, 6]
    await reader.stop()


async def test_partial_line_carried_over_by_tail_rewrite_is_read_once(log: Path) -> None:
    writer = AuditWriter(log)
    writer.append(4)
    line = writer.lines(1)
    append_bytes(log, line[:30])
    reader = await started(log)
    await reader.drain()
    rotate(log, "tail_rewrite", keep_lines=3)  # copies the partial line too
    append_bytes(log, line[30:])
    writer.append(1)
    await reader.drain()
    assert reader.seqs == [1, 2, 3, 4, 5, 6]
    assert reader.other_lines == []
    await reader.stop()


async def test_symlink_switch(tmp_path: Path) -> None:
    first, second, link = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "audit.jsonl"
    writer = AuditWriter(first)
    writer.append(10)
    link.symlink_to(first)
    reader = await started(link)
    await reader.drain()
    writer.append(4)  # unread rows in the old target
    writer.path = second
    writer.append(6)
    tmp = tmp_path / "switch"
    tmp.symlink_to(second)
    os.replace(tmp, link)
    await reader.drain()
    assert reader.seqs == list(range(1, 21))
    await reader.stop()


async def test_file_missing_for_a_while(log: Path) -> None:
    writer = AuditWriter(log)
    writer.append(5)
    reader = await started(log)
    await reader.drain()
    writer.append(2)
    os.unlink(log)
    await reader.tick()
    await reader.drain()
    assert reader.seqs == list(range(1, 8))  # the deleted file's handle was read to its end
    writer.append(3)
    await reader.drain()
    assert reader.seqs == list(range(1, 11))
    await reader.stop()


async def test_starts_when_the_file_appears(log: Path) -> None:
    reader = await started(log)
    await reader.drain()
    assert reader.seqs == []
    AuditWriter(log).append(3)
    await reader.drain()
    assert reader.seqs == [1, 2, 3]
    await reader.stop()


@pytest.mark.parametrize(
    "styles",
    [
        ["rename"],
        ["copytruncate"],
        ["tail_rewrite"],
        ["rename", "rename", "rename"],
        ["copytruncate", "copytruncate"],
        ["rename", "tail_rewrite"],
        ["tail_rewrite", "rename", "copytruncate"],
        ["copytruncate", "tail_rewrite", "rename"],
    ],
    ids="+".join,
)
async def test_rotated_while_stopped(log: Path, styles: list[str]) -> None:
    writer = AuditWriter(log)
    writer.append(20)
    reader = await started(log)
    await reader.drain()
    await reader.stop()
    for style in styles:
        writer.append(7)
        rotate(log, style)
    writer.append(3)
    await reader.start()
    await reader.drain()
    assert reader.seqs == list(range(1, writer.seq + 1))
    assert reader.events.gaps == []
    await reader.stop()


async def test_tail_rewrite_while_stopped(log: Path) -> None:
    writer = AuditWriter(log)
    writer.append(100)
    reader = await started(log)
    await reader.drain()
    await reader.stop()
    writer.append(20)
    rotate(log, "tail_rewrite", keep_lines=50)
    writer.append(5)
    await reader.start()
    await reader.drain()
    assert reader.seqs == list(range(1, 126))
    await reader.stop()


@pytest.mark.parametrize("spooled", [False, True], ids=["vanished_while_stopped", "spooled_while_running"])
async def test_tail_rewrite_of_a_small_file_rotated_away_before_a_restart_is_read(
    log: Path, tmp_path: Path, spooled: bool
) -> None:
    """The producer rewrites a file of fewer lines than it keeps, so the new version begins with
    every byte of the old one (the same fingerprint) and goes on; it is renamed away before the
    restart, and no checkpoint ever listed it. It is a version, not a copy of the listed one."""
    writer = AuditWriter(log)
    writer.append(20)
    reader = await started(log, spool_dir=tmp_path / "spool")
    await reader.drain()
    writer.append(5)  # read (when spooled) but never delivered
    if spooled:
        await reader.tailer.read(0.0)  # type: ignore[union-attr]
    resume = reader._snapshot()
    rotate(log, "tail_rewrite")
    writer.append(4)
    if spooled:
        await reader.tick()  # the old version vanished: its undelivered rows are spooled
    await reader.tailer.close()  # type: ignore[union-attr]
    rotate(log, "rename")
    writer.append(3)
    reader.resume = resume
    await reader.start()
    await reader.drain()
    assert sorted(set(range(21, 33)) - set(reader.seqs)) == [], reader.events.gaps
    assert reader.events.gaps == []
    await reader.stop()


async def test_version_rewritten_away_while_stopped_with_every_row_in_its_rewrite_is_no_gap(log: Path) -> None:
    """A version read but not delivered vanishes while the daemon is stopped (the producer's
    tail-rewrite), its rows all in the rewrite: the chain shows the rewrite's first
    row follows the last row read, so nothing is missing and no gap may be reported."""
    writer = AuditWriter(log)
    writer.append(20)
    reader = await started(log)
    await reader.drain()
    writer.append(10)
    rotate(log, "rename")
    writer.append(10)
    await reader.tick()  # both versions queued
    for _ in range(4):  # read (the second from its start), nothing delivered
        await reader.tailer.read(0.0)  # type: ignore[union-attr]
    await reader.crash()
    await reader.stop()
    rotate(log, "tail_rewrite")  # the queued version vanishes; its 10 rows begin the rewrite
    writer.append(5)
    await reader.start()
    await reader.drain()
    assert reader.seqs[:20] == list(range(1, 21))
    assert sorted(set(reader.seqs[20:])) == list(range(21, 46))
    assert reader.events.gaps == []
    await reader.stop()


async def test_resume_point_gone_is_a_loud_gap(log: Path) -> None:
    writer = AuditWriter(log)
    writer.append(100)
    reader = await started(log)
    await reader.drain()
    await reader.stop()
    writer.append(20)
    rotate(log, "tail_rewrite", keep_lines=10)  # the last delivered row is gone for good
    await reader.start()
    await reader.drain()
    assert len(reader.events.gaps) == 1
    assert reader.seqs == list(range(1, 101)) + list(range(111, 121))
    await reader.stop()


async def test_inode_reuse_is_not_trusted(log: Path) -> None:
    """A checkpoint naming the inode that a new file now has: fingerprint and last line decide.
    The old file was delivered to its end and the new one starts a new chain: no row is
    missing, so no gap (and nothing is read twice)."""
    writer = AuditWriter(log)
    writer.append(30)
    reader = await started(log)
    await reader.drain()
    await reader.stop()
    os.unlink(log)
    other = AuditWriter(log, seq=500)
    other.append(40)  # bigger than the old offset, so an inode-only check would seek into it
    assert reader.resume is not None and reader.resume.position.identity is not None
    st = os.stat(log)
    from dataclasses import replace

    resume = reader.resume
    reused = replace(resume.versions[0].identity, dev=st.st_dev, ino=st.st_ino)
    version = replace(resume.versions[0], identity=reused)
    reader.resume = replace(resume, position=replace(resume.position, identity=reused), versions=(version,))
    await reader.start()
    await reader.drain()
    assert reader.seqs == list(range(1, 31)) + list(range(501, 541))
    assert reader.events.gaps == []
    await reader.stop()


async def test_small_files_sharing_first_line_are_not_confused(log: Path) -> None:
    """Two tiny files with the same first row: the checkpoint's last line tells them apart."""
    writer = AuditWriter(log)
    writer.append(1)
    reader = await started(log)
    await reader.drain()
    await reader.stop()
    shutil.copyfile(log, f"{log}.1")  # an old copy: same first (and only) row
    writer.append(2)  # the live file goes on
    await reader.start()
    await reader.drain()
    assert reader.seqs == [1, 2, 3]
    await reader.stop()


async def test_held_files_are_visible_and_released(log: Path) -> None:
    writer = AuditWriter(log)
    writer.append(10)
    reader = await started(log)
    await reader.drain()
    writer.append(10)
    rotate(log, "rename")
    await reader.tick()
    assert reader.events.held[0] == 1 and reader.events.held[1] > 0
    writer.append(1)
    await reader.drain()
    assert reader.events.held == (0, 0)
    assert reader.seqs == list(range(1, 22))
    await reader.stop()


async def test_rotated_file_is_not_released_while_written(log: Path) -> None:
    """No fixed wait abandons rows (Fluent Bit rotate_wait): a rotated file still being written
    stays the head until it has been quiet."""
    writer = AuditWriter(log)
    writer.append(3)
    reader = await started(log, rotate_quiet=0.3)
    await reader.drain()
    os.rename(log, f"{log}.1")
    AuditWriter(log, seq=100).append(1)
    await reader.tick()
    writer.path = Path(f"{log}.1")  # a writer that kept the old file open
    writer.append(2)
    await reader.drain()
    assert reader.seqs == [1, 2, 3, 4, 5, 101]
    await reader.stop()


async def test_a_copy_read_but_not_yet_delivered_is_not_read_again_after_the_next_rotation(log: Path) -> None:
    """A copytruncate's copy, read to its end and waiting for a checkpoint, is a version the tailer
    holds: when the next rotation (a tail-rewrite) sends it looking for versions it missed, the
    copy must not be taken for one (it was read twice, its first row a false chain break)."""
    writer = AuditWriter(log)
    writer.append(5)
    reader = await started(log)
    await reader.drain()
    writer.append(4)
    rotate(log, "copytruncate")
    writer.append(100)  # more than the overlap search looks back (recent.LATE_LINES)
    await reader.drain(durable=False)  # the copy is read to its end and held until a checkpoint
    rotate(log, "tail_rewrite")
    writer.append(2)
    # The last look and the copy within one tick of the kernel's coarse clock (a busy producer):
    # the copy's time does not tell it from a version written since.
    reader.tailer.queue.changes.seen_at = os.stat(f"{log}.1").st_mtime_ns  # type: ignore[union-attr]
    await reader.tick()
    await reader.drain()
    assert reader.seqs == list(range(1, 112))
    assert reader.events.gaps == []
    await reader.stop()
