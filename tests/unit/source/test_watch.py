"""The tailer's wake-ups (inotify, real files): appends wake a waiter, and `settle` lets a run of
appends pile up while a rename or a new file cuts it short (the monitor's rotation checks)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from audit_otlp.source.watch import FileWatcher
from tests.helpers.auditgen import AuditWriter

pytestmark = pytest.mark.timeout(30)


async def started(path: Path) -> FileWatcher:
    watcher = FileWatcher(path, poll_interval=5.0)
    watcher.start()
    if not watcher.uses_inotify:
        pytest.skip("inotify unavailable here")
    return watcher


async def test_an_append_wakes_a_waiter(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.touch()
    watcher = await started(log)
    waiter = asyncio.create_task(watcher.wait(None))
    AuditWriter(log).append(1)
    assert await asyncio.wait_for(waiter, 2.0) is True
    watcher.close()


async def test_settle_waits_out_appends(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.touch()
    watcher = await started(log)
    writer = AuditWriter(log)
    started_at = time.monotonic()
    settling = asyncio.create_task(watcher.settle(0.5))
    for _ in range(5):
        writer.append(1)
        await asyncio.sleep(0.02)  # the writer's pace
    await settling
    assert time.monotonic() - started_at >= 0.45, "appends must not cut the settling short"
    watcher.close()


@pytest.mark.parametrize("change", ["rename", "create_sibling", "delete"])
async def test_a_rotation_cuts_settle_short(tmp_path: Path, change: str) -> None:
    log = tmp_path / "audit.jsonl"
    AuditWriter(log).append(3)
    watcher = await started(log)
    started_at = time.monotonic()
    settling = asyncio.create_task(watcher.settle(5.0))
    if change == "rename":
        os.rename(log, f"{log}.1")
    elif change == "create_sibling":
        Path(f"{log}.1").write_bytes(log.read_bytes())
    else:
        log.unlink()
    await asyncio.wait_for(settling, 2.0)
    assert time.monotonic() - started_at < 2.0
    watcher.close()
