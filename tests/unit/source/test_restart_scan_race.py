"""A restart while the producer keeps rotating: the directory scan that finds every version
(resume.open_candidates) must not miss one that moved while it looked. The rotation is made
to happen at a chosen moment inside the scan (the only mock: a wrapper around its open)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from audit_otlp.source import changes, resume, siblings
from tests.helpers.auditgen import AuditWriter
from tests.helpers.rotation import rotate
from tests.helpers.tailer_reader import Reader

pytestmark = pytest.mark.timeout(60)


def rotate_at_open(monkeypatch: pytest.MonkeyPatch, n: int, act: Callable[[], None]) -> None:
    """Run `act` (a rotation) just before the scan's `n`-th open (0: the current file)."""
    real = resume.open_followed
    calls = 0

    def opening(path: Path, max_line_bytes: int, *args: Any) -> Any:
        nonlocal calls
        if calls == n:
            act()
        calls += 1
        return real(path, max_line_bytes, *args)

    for module in (resume, changes, siblings):  # the path's file is opened by the first two, siblings by the last
        if hasattr(module, "open_followed"):
            monkeypatch.setattr(module, "open_followed", opening)


async def delivered(log: Path, rows: int) -> tuple[AuditWriter, Reader]:
    """A writer that appended `rows` rows, all read and delivered by a started reader."""
    writer = AuditWriter(log)
    writer.append(rows)
    reader = Reader(log)
    await reader.start()
    await reader.drain()
    return writer, reader


async def settle_and_check(reader: Reader, writer: AuditWriter) -> None:
    """Read to the end (with looks at the path between), then: every row once, no gap."""
    for _ in range(3):
        await reader.drain()
        await reader.tick()
    await reader.drain()
    missing = sorted(set(range(1, writer.seq + 1)) - set(reader.seqs))
    assert missing == [], f"lost {missing}; gaps {reader.events.gaps}"
    assert reader.events.gaps == [], (reader.gap_rows, reader.seqs)
    assert len(reader.seqs) == len(set(reader.seqs)), reader.seqs
    await reader.stop()


@pytest.mark.parametrize(
    "at_open", [0, 1, 2, 3], ids=["before_current", "before_sibling_1", "before_sibling_2", "before_sibling_3"]
)
@pytest.mark.parametrize("style", ["rename", "copytruncate", "tail_rewrite"])
async def test_rotation_during_the_restart_scan_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, style: str, at_open: int
) -> None:
    log = tmp_path / "audit.jsonl"
    writer, reader = await delivered(log, 20)
    await reader.stop()
    for _ in range(3):  # versions the checkpoint never saw, each with undelivered rows
        writer.append(7)
        rotate(log, "rename")
    writer.append(5)

    def producer_rotates() -> None:
        writer.append(4)
        rotate(log, style)
        writer.append(2)

    rotate_at_open(monkeypatch, at_open, producer_rotates)
    await reader.start()
    monkeypatch.undo()
    await settle_and_check(reader, writer)


@pytest.mark.parametrize("style", ["rename", "copytruncate", "tail_rewrite"])
async def test_rotation_while_looking_for_briefly_seen_versions_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, style: str
) -> None:
    """Two rotations between two looks leave a version the tailer never saw at the path; while it
    searches the siblings for it (changes.missed), the producer rotates once more."""
    log = tmp_path / "audit.jsonl"
    writer, reader = await delivered(log, 10)
    for _ in range(2):
        writer.append(5)
        rotate(log, "rename")
    writer.append(3)

    def producer_rotates() -> None:
        writer.append(4)
        rotate(log, style)
        writer.append(2)

    rotate_at_open(monkeypatch, 1, producer_rotates)  # 0: the new file at the path, 1: the first sibling
    await reader.tick()
    monkeypatch.undo()
    await settle_and_check(reader, writer)


async def test_restart_scan_between_a_copytruncates_copy_and_its_truncate_loses_and_repeats_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan sees the copy (a version it never saw) and the path's file still whole; the
    truncate comes right after it: the rows are all in the copy, read before the emptied file."""
    log = tmp_path / "audit.jsonl"
    writer, reader = await delivered(log, 10)
    await reader.stop()
    writer.append(6)
    rotate(log, "rename")
    writer.append(5)
    real = resume.open_candidates

    def scan_mid_copytruncate(path: Path, pattern: str, max_line_bytes: int) -> Any:
        for n in sorted((int(p.suffix[1:]) for p in tmp_path.glob("audit.jsonl.[0-9]*")), reverse=True):
            os.rename(f"{log}.{n}", f"{log}.{n + 1}")
        shutil.copyfile(log, f"{log}.1")
        files = real(path, pattern, max_line_bytes)
        os.truncate(log, 0)
        writer.append(2)
        return files

    monkeypatch.setattr(resume, "open_candidates", scan_mid_copytruncate)
    await reader.start()
    monkeypatch.undo()
    await reader.tick()  # the truncation seen at the path while the copy still waits its turn
    for _ in range(2):
        await reader.drain()
        await reader.tick()
    await reader.drain()
    assert reader.seqs == list(range(1, writer.seq + 1)), reader.events.gaps
    assert reader.events.gaps == []
    await reader.stop()


async def test_copytruncate_while_looking_for_copies_of_a_file_seen_empty_is_no_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file last seen empty was written: the tailer searches the siblings for copies made of
    it (nothing else can identify them), and the producer copytruncates it during that search.
    The copy is queued as a version seen only briefly; the truncation, noticed at the next look,
    finds no other copy, but loses nothing: the emptied file's first row names the copy's last."""
    log = tmp_path / "audit.jsonl"
    writer, reader = await delivered(log, 5)
    rotate(log, "rename")
    await reader.tick()  # the new, empty file is queued
    await reader.drain()
    writer.append(4)
    real = changes.PathChanges.missed

    def copytruncate_meanwhile(self: changes.PathChanges, files: list[Any]) -> list[Any]:
        monkeypatch.undo()
        rotate(log, "copytruncate")
        return real(self, files)

    monkeypatch.setattr(changes.PathChanges, "missed", copytruncate_meanwhile)
    await reader.tick()
    writer.append(2)
    assert reader.seqs == list(range(1, 6))
    await settle_and_check(reader, writer)
