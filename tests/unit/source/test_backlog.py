"""`find_backlog` (what `audit-otlp status` shows) agrees with what a restarted tailer actually reads:
for every rotation done while the daemon is stopped, the rows it counts are the rows delivered
next, and it reports a resume gap exactly when the tailer does: when rows that were never
delivered vanished."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from audit_otlp.source.backlog import find_backlog
from tests.helpers.auditgen import AuditWriter
from tests.helpers.rotation import rotate
from tests.helpers.tailer_reader import Reader

pytestmark = pytest.mark.timeout(60)


def rewrite_without_the_last_line(log: Path, writer: AuditWriter) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:3]))  # same inode, other content: the delivered line is gone


def tail_rewrite_dropping_undelivered_rows(log: Path, writer: AuditWriter) -> None:
    writer.append(10)  # written while stopped, never delivered...
    rotate(log, "tail_rewrite", keep_lines=4)  # ...and six of them gone with the rewrite


def rotate_twice(log: Path, writer: AuditWriter) -> None:
    rotate(log, "rename")
    writer.append(4)
    rotate(log, "rename")


def tail_rewrite_behind(log: Path, writer: AuditWriter) -> None:
    writer.append(6)  # not delivered yet: only the rotated-away file still holds them all
    os.rename(log, f"{log}.1")
    (log.parent / "audit.tmp").write_bytes(b"".join(Path(f"{log}.1").read_bytes().splitlines(keepends=True)[-5:]))
    os.rename(log.parent / "audit.tmp", log)


SCENARIOS: dict[str, Callable[[Path, AuditWriter], None]] = {
    "only_appended": lambda log, writer: None,
    "logrotate_create": lambda log, writer: rotate(log, "rename"),
    "copytruncate": lambda log, writer: rotate(log, "copytruncate"),
    "tail_rewrite_repeats_delivered_lines": lambda log, writer: rotate(log, "tail_rewrite", keep_lines=8),
    "tail_rewrite_with_undelivered_rows_in_the_old_file": tail_rewrite_behind,
    "two_rotations_while_stopped": rotate_twice,
    # Rewritten in place after it was delivered to its end: read again from its start (its
    # first row starts a new chain, nothing undelivered vanished: no gap).
    "rewritten_in_place_after_delivery": rewrite_without_the_last_line,
    "tail_rewrite_dropping_undelivered_rows_is_a_gap": tail_rewrite_dropping_undelivered_rows,
}


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_backlog_counts_exactly_the_rows_a_restart_reads(tmp_path: Path, scenario: str) -> None:
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter(log)
    writer.append(12)
    reader = Reader(log)
    await reader.start()
    await reader.drain()  # delivered: the resume point is after row 12
    await reader.stop()
    SCENARIOS[scenario](log, writer)
    writer.append(7)

    backlog = find_backlog(log, f"{log}.*", reader.resume, reader.max_line_bytes)

    delivered = len(reader.seqs)
    await reader.start()
    await reader.drain()
    await reader.stop()
    assert backlog.pending_rows == len(reader.seqs) - delivered > 0, (backlog, reader.seqs)
    assert backlog.resume_gap == bool(reader.events.gaps)
    assert backlog.resume_gap == scenario.endswith("_is_a_gap")
    assert backlog.files[-1].path == log and not backlog.files[-1].rotated
    assert all(f.rotated for f in backlog.files[:-1])
