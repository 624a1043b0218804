"""Durable appends (the dead-letter and receipt files) through aiofiles: on disk, file and new
directory entry fsynced, before `append` returns; OSError when the file cannot be written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest

from audit_otlp.delivery.records import DurableLog
from audit_otlp.state.durable import append_durably

pytestmark = pytest.mark.timeout(60)


def fsyncs_seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths os.fsync is called on, in order (the real fsync still runs)."""
    seen: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return seen


async def test_an_append_fsyncs_the_file_and_the_directory_only_when_it_created_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state" / "receipts.jsonl"
    seen = fsyncs_seen(monkeypatch)
    await append_durably(path, b"one\n")
    assert seen == [str(path), str(path.parent)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    seen.clear()
    await append_durably(path, b"two\n")
    assert seen == [str(path)]
    assert path.read_bytes() == b"one\ntwo\n"


async def test_an_append_after_the_file_was_deleted_creates_it_again_by_name(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "dead-letter.jsonl")
    await log.append([{"n": 1}])
    os.unlink(log.path)
    await log.append([{"n": 2}, {"n": 3}])
    assert [orjson.loads(line) for line in log.path.read_bytes().splitlines()] == [{"n": 2}, {"n": 3}]


async def test_a_vanished_directory_is_made_again(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "state" / "dead-letter.jsonl")
    await log.append([{"n": 1}])
    os.unlink(log.path)
    os.rmdir(log.path.parent)
    await log.append([{"n": 2}])
    assert log.last_record() == {"n": 2}


async def test_an_append_where_the_directory_cannot_be_raises_oserror(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "state" / "dead-letter.jsonl")
    await log.append([{"n": 1}])
    os.unlink(log.path)
    os.rmdir(log.path.parent)
    log.path.parent.write_bytes(b"a file where the directory was")
    with pytest.raises(OSError):
        await log.append([{"n": 2}])
    with pytest.raises(OSError):
        await append_durably(log.path.parent / "deeper" / "receipts.jsonl", b"x\n")
    assert log.path.parent.read_bytes() == b"a file where the directory was"
