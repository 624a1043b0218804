"""`run --foreground` for a person at a terminal: coloured logs and a live progress line on a TTY
(driven through a real pseudo-terminal), plain output when not a TTY, -v request outcomes,
--dry-run printing spans, and Ctrl-C stopping cleanly with the checkpoint written."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import threading
from pathlib import Path

import pytest

from audit_otlp.runtime.progress import Progress, ProgressReporter, TerminalLine, format_progress
from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector, Reply
from tests.helpers.daemon import load_checkpoint
from tests.helpers.terminal import ANSI, PtyOutput, become_terminal_session


def test_tty_shows_colour_and_progress_line_and_ctrl_c_writes_checkpoint(tmp_path: Path, audit_cli: str) -> None:
    AuditWriter(tmp_path / "audit.jsonl").append(3000)  # ~600 KiB: a backlog worth an ETA
    (tmp_path / "c.toml").write_text("[batch]\nmax_spans = 20\n")
    gate = threading.Event()  # the collector holds every answer until the test has seen the line

    def responder(doc: dict, n: int) -> Reply:
        gate.wait(30)
        return Reply()

    with Collector(responder) as collector:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [
                audit_cli,
                "run",
                "--foreground",
                "--config",
                str(tmp_path / "c.toml"),
                "--file",
                str(tmp_path / "audit.jsonl"),
                "--checkpoint",
                str(tmp_path / "cp.json"),
                "--endpoint",
                collector.endpoint,
            ],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=become_terminal_session,
            env={**os.environ, "TERM": "xterm"},
        )
        os.close(slave)
        out = PtyOutput(master)
        try:
            assert out.wait_for("catching up:"), out.text()
            line = out.text().rsplit("catching up:", 1)[1].split("\r")[0]
            assert re.search(r"rows/s, .* left, ETA", line), line
            gate.set()
            assert collector.wait_for_spans(3000, timeout=120)
            os.write(master, b"\x03")  # Ctrl-C
            assert proc.wait(30) == 0, out.text()
        finally:
            gate.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert out.wait_for("stopped:"), out.text()
    text = out.text()
    assert "\x1b[36mINFO" in text  # coloured level names on a TTY
    assert "\r\x1b[K" in text  # the progress line is redrawn in place
    checkpoint = load_checkpoint(tmp_path / "cp.json")
    assert checkpoint is not None and checkpoint["delivered_spans"] == 3000
    assert checkpoint["offset"] == (tmp_path / "audit.jsonl").stat().st_size


def test_not_a_tty_gives_plain_lines_without_progress_or_colour(tmp_path: Path, audit_cli: str) -> None:
    AuditWriter(tmp_path / "audit.jsonl").append(50)
    with Collector() as collector:
        result = subprocess.run(
            [
                audit_cli,
                "run",
                "--foreground",
                "--once",
                "-v",
                "--file",
                str(tmp_path / "audit.jsonl"),
                "--checkpoint",
                str(tmp_path / "cp.json"),
                "--endpoint",
                collector.endpoint,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "AUDIT_OTLP_LOG_FORMAT": "json"},
        )  # --foreground means text for a person
    assert result.returncode == 0, result.stderr
    assert not ANSI.search(result.stderr) and "\r" not in result.stderr
    assert "catching up" not in result.stderr
    assert re.search(r"^\S+Z INFO +following ", result.stderr, re.M), result.stderr
    # -v: each request's outcome with its status, span count and latency.
    assert re.search(r"DEBUG +request: status=200 spans=50 bytes=\d+ latency=\d+ms", result.stderr), result.stderr


def test_dry_run_prints_spans_and_posts_nothing(tmp_path: Path, audit_cli: str) -> None:
    AuditWriter(tmp_path / "audit.jsonl").append(7)
    with Collector() as collector:
        result = subprocess.run(
            [
                audit_cli,
                "run",
                "--foreground",
                "--dry-run",
                "--once",
                "--file",
                str(tmp_path / "audit.jsonl"),
                "--checkpoint",
                str(tmp_path / "cp.json"),
                "--endpoint",
                collector.endpoint,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert collector.requests == []
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    spans = [s for d in docs for rs in d["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert len(spans) == 7
    assert not (tmp_path / "cp.json").exists()


# -- the progress line as a unit ---------------------------------------------------------------


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_reports_rate_bytes_left_and_eta_then_the_status_line_once_caught_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a FakeTty has no size of its own
    out = FakeTty()
    line = TerminalLine(out)
    now = [0.0]
    snap = [Progress(0, 0, 1_000_000)]
    reporter = ProgressReporter(line, lambda: snap[0], clock=lambda: now[0], colour=False, wall_clock=lambda: 100.0)
    # not yet: a backlog must be seen twice before it counts as catching up
    assert reporter.tick().startswith("delivered 0 (0/s) · backlog ? rows, 976.6 KiB")
    now[0], snap[0] = 2.0, Progress(200, 200_000, 800_000, delivered=200)  # 100 rows/s, 100 kB/s -> 8 s left
    assert reporter.tick() == "catching up: 100 rows/s, 781.2 KiB left, ETA 8s"
    now[0], snap[0] = 3.0, Progress(1000, 1_000_000, 0, delivered=1000, backlog_rows=0, last_success_unix=99.0)
    shown = reporter.tick()
    assert (
        shown == "delivered 1,000 (333/s) · backlog 0 rows, 0 B · last 2xx 1s ago · retrying 0 · dead-lettered 0 · chain intact"
    )
    assert out.getvalue().endswith("\r\x1b[K" + shown)  # redrawn in place


def test_a_backlog_that_is_gone_by_the_next_sample_never_shows_catching_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a FakeTty has no size of its own
    out = FakeTty()
    now = [0.0]
    snap = [Progress(0, 0, 0)]
    reporter = ProgressReporter(TerminalLine(out), lambda: snap[0], clock=lambda: now[0], colour=False)
    for step, backlog in enumerate([0, 300_000, 0, 0, 500_000, 0]):
        now[0], snap[0] = float(step), Progress(step, step * 100, backlog)
        assert reporter.tick().startswith("delivered ")
    assert "catching up" not in out.getvalue()


def test_a_failing_collector_shows_the_status_line_not_an_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a FakeTty has no size of its own
    now = [0.0]
    snap = [Progress(0, 0, 5_000_000, last_error="HTTP 503", retrying=4)]
    reporter = ProgressReporter(TerminalLine(FakeTty()), lambda: snap[0], clock=lambda: now[0], colour=False)
    reporter.tick()
    now[0] = 1.0
    shown = reporter.tick()
    assert "catching up" not in shown and "retrying 4 (HTTP 503)" in shown and shown.endswith("last error: HTTP 503")


def test_log_records_erase_and_redraw_the_progress_line() -> None:
    out = FakeTty()
    line = TerminalLine(out)
    line.show("catching up: 1 rows/s")
    line.write("INFO hello\n")
    assert out.getvalue() == "\r\x1b[Kcatching up: 1 rows/s\r\x1b[KINFO hello\ncatching up: 1 rows/s"


@pytest.mark.parametrize(
    "bytes_per_s,left,shown", [(0, 5_000, "ETA ?"), (1000, 5_000, "ETA 5s"), (1, 10_000, "ETA 2h46m"), (100, 9_000, "ETA 1m30s")]
)
def test_eta_formatting(bytes_per_s: float, left: int, shown: str) -> None:
    assert format_progress(10, bytes_per_s, left).endswith(shown)
