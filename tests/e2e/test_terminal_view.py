"""`run --foreground` under a real pseudo-terminal, as a person watches it: after catching up, ONE
line redrawn in place with delivered and rate, backlog rows and bytes, time since the last 2xx,
requests retrying and why, dead letters, the chain, the collector's last error; coloured; cut to
the terminal's width; `-v` still logs one line per request; and nothing of it when not a TTY."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector, Reply
from tests.helpers.daemon import daemon_env, write_config
from tests.helpers.terminal import ANSI, REDRAW, spawn_in_pty
from tests.helpers.wait import wait_until


def foreground_argv(audit_cli: str, tmp: Path, endpoint: str, *extra: str) -> list[str]:
    config = write_config(tmp / "c.toml", retry={"initial_backoff": "200ms", "max_backoff": "500ms"})
    return [audit_cli, "run", "--foreground", "--config", str(config), "--file", str(tmp / "audit.jsonl")] + [
        "--checkpoint",
        str(tmp / "cp.json"),
        "--endpoint",
        endpoint,
        *extra,
    ]


def plain_lines(drawn: list[str]) -> list[str]:
    return [ANSI.sub("", line).replace("^C", "") for line in drawn]  # ^C: the terminal's echo of Ctrl-C


def test_the_status_line_follows_delivery_an_outage_and_the_recovery(tmp_path: Path, audit_cli: str) -> None:
    writer = AuditWriter(tmp_path / "audit.jsonl")
    writer.append(30)
    down = threading.Event()
    with Collector(lambda doc, n: Reply(503, b"busy") if down.is_set() else Reply()) as collector:
        argv = foreground_argv(audit_cli, tmp_path, collector.endpoint)
        proc, master, out = spawn_in_pty(argv, {**daemon_env(), "TERM": "xterm"}, columns=200)
        try:
            caught_up = "delivered 30 ("
            assert wait_until(
                lambda: any(caught_up in s and "backlog 0 rows, 0 B" in s for s in plain_lines(out.drawn_lines())), 30
            ), out.text()
            line = next(s for s in plain_lines(out.drawn_lines()) if caught_up in s)
            assert re.search(r"last 2xx \d+s ago · retrying 0 · dead-lettered 0 · chain intact$", line), line
            assert "\x1b[32mdelivered 30" in out.text() and "\x1b[32mchain intact" in out.text()  # coloured on a TTY

            down.set()
            writer.append(5)  # the collector now answers 503: the line says so, and why
            assert wait_until(lambda: any("retrying 1 (HTTP 503)" in s for s in plain_lines(out.drawn_lines())), 30), out.text()
            failing = next(s for s in plain_lines(out.drawn_lines()) if "retrying 1 (HTTP 503)" in s)
            assert "backlog 5 rows, " in failing or "backlog ? rows, " in failing, failing  # ?: being counted
            assert failing.endswith("last error: HTTP 503"), failing
            assert wait_until(lambda: any("backlog 5 rows" in s for s in plain_lines(out.drawn_lines())), 30), out.text()

            down.clear()
            recovered = "delivered 35 ("
            assert wait_until(
                lambda: any(recovered in s and "backlog 0 rows" in s for s in plain_lines(out.drawn_lines())), 60
            ), out.text()
            assert "last error" not in next(s for s in plain_lines(out.drawn_lines()) if recovered in s)
            os.write(master, b"\x03")  # Ctrl-C
            assert proc.wait(30) == 0, out.text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # One line, redrawn in place: every state of it follows an erase, none holds a line break,
    # and log records never land inside it.
    for drawn in out.drawn_lines():
        assert "\n" not in drawn and " INFO " not in drawn and "WARNING" not in drawn, drawn


def test_the_line_fits_a_narrow_terminal_and_no_color_is_honoured(tmp_path: Path, audit_cli: str) -> None:
    AuditWriter(tmp_path / "audit.jsonl").append(10)
    with Collector() as collector:
        env = daemon_env(NO_COLOR="1")  # https://no-color.org
        proc, master, out = spawn_in_pty(foreground_argv(audit_cli, tmp_path, collector.endpoint), env, columns=60)
        try:
            assert wait_until(lambda: any("delivered 10 (" in s for s in plain_lines(out.drawn_lines())), 30), out.text()
            os.write(master, b"\x03")
            assert proc.wait(30) == 0, out.text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    drawn = [s for s in plain_lines(out.drawn_lines()) if s]
    assert drawn and max(len(s) for s in drawn) <= 59, drawn  # a wrapped line could not be redrawn in place
    assert not re.search(r"\x1b\[[0-9;]+m", out.text()), out.text()  # erases, but no colour


def test_verbose_keeps_one_line_per_request_beside_the_live_line(tmp_path: Path, audit_cli: str) -> None:
    AuditWriter(tmp_path / "audit.jsonl").append(40)
    (tmp_path / "batch.toml").write_text("")
    with Collector() as collector:
        argv = foreground_argv(audit_cli, tmp_path, collector.endpoint, "-v")
        (tmp_path / "c.toml").write_text((tmp_path / "c.toml").read_text() + "[batch]\nmax_spans = 10\n")
        proc, master, out = spawn_in_pty(argv, daemon_env(), columns=200)
        try:
            assert wait_until(lambda: any("delivered 40 (" in s for s in plain_lines(out.drawn_lines())), 30), out.text()
            os.write(master, b"\x03")
            assert proc.wait(30) == 0, out.text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        requests = len(collector.requests)
    logged = re.findall(r"DEBUG +request: status=200 spans=\d+ bytes=\d+ latency=\d+ms", ANSI.sub("", out.text()))
    assert requests == 4 and len(logged) == requests, out.text()


def test_not_a_tty_has_no_live_line(tmp_path: Path, audit_cli: str) -> None:
    AuditWriter(tmp_path / "audit.jsonl").append(10)
    with Collector() as collector:
        result = subprocess.run(
            foreground_argv(audit_cli, tmp_path, collector.endpoint, "--once"),
            capture_output=True,
            text=True,
            timeout=60,
            env=daemon_env(),
        )
    assert result.returncode == 0, result.stderr
    assert REDRAW not in result.stderr and "\x1b[" not in result.stderr and " · " not in result.stderr, result.stderr
