"""`audit-otlp status` figures checked against files and checkpoints whose contents the test knows
exactly: offset, size, backlog bytes and rows, last 2xx, last error, chain state, rotated files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.auditgen import AuditWriter, append_bytes
from tests.helpers.collector import Collector, Reply
from tests.helpers.daemon import checkpoint_view
from tests.helpers.rotation import rotate


def run(audit_cli: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([audit_cli, *args], capture_output=True, text=True, timeout=60)


def status_json(audit_cli: str, tmp_path: Path) -> dict:
    result = run(
        audit_cli, "status", "--json", "--file", str(tmp_path / "audit.jsonl"), "--checkpoint", str(tmp_path / "cp.json")
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def delivered(tmp_path: Path, audit_cli: str) -> AuditWriter:
    """10 rows delivered by a real `run --once` (the first attempt answered 503, then 200)."""
    writer = AuditWriter(tmp_path / "audit.jsonl")
    writer.append(10)
    with Collector(lambda doc, n: Reply(503, b"busy") if n == 1 else Reply()) as collector:
        result = run(
            audit_cli,
            "run",
            "--once",
            "--deadline",
            "30",
            "--file",
            str(tmp_path / "audit.jsonl"),
            "--checkpoint",
            str(tmp_path / "cp.json"),
            "--endpoint",
            collector.endpoint,
        )
        assert result.returncode == 0, result.stderr
        assert len(collector.accepted_spans()) == 10
    # The daemon's own promise, checked here so that a failure below is about status, not about it.
    checkpoint = (tmp_path / "cp.json").read_text()
    assert checkpoint_view(json.loads(checkpoint))["offset"] == (tmp_path / "audit.jsonl").stat().st_size, (
        checkpoint,
        result.stderr,
    )
    return writer


def test_backlog_is_exact_after_delivery_and_appends(tmp_path: Path, audit_cli: str, delivered: AuditWriter) -> None:
    delivered_size = (tmp_path / "audit.jsonl").stat().st_size
    delivered.append(7)
    append_bytes(tmp_path / "audit.jsonl", b'{"event":"partial"')  # a last line without its newline
    size = (tmp_path / "audit.jsonl").stat().st_size
    status = status_json(audit_cli, tmp_path)
    assert status["file_size"] == size
    assert status["offset"] == delivered_size
    assert status["backlog_bytes"] == size - delivered_size
    assert status["backlog_rows"] == 7  # complete lines only: the partial one is not a row yet
    assert status["delivered_spans"] == 10
    assert status["last_success"] is not None
    assert "503" in status["last_error"]
    assert status["chain"] == {
        "verify": True,
        "key_source": "none",
        "last_hash": delivered.hasher.row_hash(_row(tmp_path, 10)),
        "breaks": 0,
    }
    assert status["rotated_files_held"] == [] and status["resume_gap"] is False

    text = run(audit_cli, "status", "--file", str(tmp_path / "audit.jsonl"), "--checkpoint", str(tmp_path / "cp.json")).stdout
    assert f"backlog:         {size - delivered_size:,} bytes, 7 rows" in text
    assert "last 2xx:        20" in text and "rotated files:   none held" in text


def _row(tmp_path: Path, seq: int) -> dict:
    for line in (tmp_path / "audit.jsonl").read_bytes().splitlines():
        row = json.loads(line) if line.startswith(b"{") and line.endswith(b"}") else {}
        if row.get("seq") == seq:
            return row
    raise AssertionError(seq)


def test_rotated_file_held_and_the_overlap_of_the_new_file_is_not_counted(
    tmp_path: Path, audit_cli: str, delivered: AuditWriter
) -> None:
    log = tmp_path / "audit.jsonl"
    delivered_size = log.stat().st_size
    delivered.append(4)
    # The producer's own rotation: the last 3 lines go to a new file renamed over audit.jsonl.
    old_lines = log.read_bytes().splitlines(keepends=True)
    os.rename(log, tmp_path / "audit.jsonl.1")
    (tmp_path / "new.tmp").write_bytes(b"".join(old_lines[-3:]))
    os.rename(tmp_path / "new.tmp", log)
    delivered.append(5)
    status = status_json(audit_cli, tmp_path)
    held = status["rotated_files_held"]
    assert held, (status, json.loads((tmp_path / "cp.json").read_text()), os.stat(tmp_path / "audit.jsonl.1"))
    assert held == [
        {
            "path": str(tmp_path / "audit.jsonl.1"),
            "pending_bytes": (tmp_path / "audit.jsonl.1").stat().st_size - delivered_size,
            "pending_rows": 4,
            "spooled": False,
        }
    ]
    assert status["backlog_rows"] == 4 + 5  # the 3 repeated lines are not counted twice
    new_rows_bytes = log.stat().st_size - sum(len(line) for line in old_lines[-3:])
    assert status["backlog_bytes"] == held[0]["pending_bytes"] + new_rows_bytes


def test_rewritten_file_is_read_after_its_overlap_and_a_gap_only_when_undelivered_rows_vanished(
    tmp_path: Path, audit_cli: str, delivered: AuditWriter
) -> None:
    log = tmp_path / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    # copytruncate-like: same inode, new content that still holds the last delivered line.
    log.write_bytes(b"".join(lines[-2:]))
    delivered.append(3)
    status = status_json(audit_cli, tmp_path)
    assert status["offset"] == len(lines[-2]) + len(lines[-1]), (status, (tmp_path / "cp.json").read_text())
    assert status["backlog_rows"] == 3 and status["resume_gap"] is False
    # Rewritten with two rows that were all delivered: a run of two or more lines read shortly
    # before the end is a copy (source/recent.py, LATE_LINES), so it is skipped, nothing is missing.
    log.write_bytes(b"".join(lines[:2]))
    status = status_json(audit_cli, tmp_path)
    assert status["resume_gap"] is False and status["offset"] == len(lines[0]) + len(lines[1])
    assert status["backlog_rows"] == 0
    # Rows never delivered, then a tail-rewrite keeping 2 of them: the others are gone. Status says so.
    log.write_bytes(b"".join(lines))
    delivered.append(5)
    rotate(log, "tail_rewrite", keep_lines=2)
    status = status_json(audit_cli, tmp_path)
    assert status["resume_gap"] is True and status["backlog_rows"] == 2, status
    assert "gone with rows not delivered" in status["resume_gap_reason"]


def test_no_checkpoint_means_the_whole_file_is_backlog(tmp_path: Path, audit_cli: str) -> None:
    AuditWriter(tmp_path / "audit.jsonl").append(6)
    status = status_json(audit_cli, tmp_path)
    assert status["checkpoint"] is None and status["offset"] == 0
    assert status["backlog_rows"] == 6 and status["backlog_bytes"] == (tmp_path / "audit.jsonl").stat().st_size
    assert status["last_success"] is None and status["delivered_spans"] == 0


def test_missing_file_and_corrupt_checkpoint_are_reported_and_nothing_is_modified(tmp_path: Path, audit_cli: str) -> None:
    (tmp_path / "cp.json").write_text("{not json")
    status = status_json(audit_cli, tmp_path)
    assert status["file_size"] is None and status["backlog_rows"] == 0
    assert "corrupt checkpoint" in status["checkpoint_problem"]
    assert (tmp_path / "cp.json").read_text() == "{not json"  # status never moves or rewrites it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cp.json"]
