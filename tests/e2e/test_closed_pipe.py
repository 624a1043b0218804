"""Every command whose stdout reader goes away (`audit-otlp status | head -1`) stops quietly: no
traceback, no "Exception ignored" at exit, exit code 141 as for a tool killed by SIGPIPE (argparse's
own --help and --version ignore the failed write and exit 0). The reader is gone before the
command starts (the read end of its stdout pipe is already closed), so the very first write
fails, whatever the size of the output."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.daemon import daemon_env

EXIT_OUTPUT_CLOSED = 141


@pytest.fixture
def health_server() -> Iterator[int]:
    """Something answering /healthz as a running daemon does."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def files(tmp: Path) -> list[str]:
    return ["--file", str(tmp / "audit.jsonl"), "--checkpoint", str(tmp / "cp.json")]


COMMANDS: list[tuple[str, Callable[[Path, int], list[str]], int]] = [
    ("status", lambda tmp, port: ["status", *files(tmp)], EXIT_OUTPUT_CLOSED),
    ("status --json", lambda tmp, port: ["status", "--json", *files(tmp)], EXIT_OUTPUT_CLOSED),
    ("verify", lambda tmp, port: ["verify", str(tmp / "audit.jsonl")], EXIT_OUTPUT_CLOSED),
    ("verify --json", lambda tmp, port: ["verify", "--json", str(tmp / "audit.jsonl")], EXIT_OUTPUT_CLOSED),
    ("export", lambda tmp, port: ["export", str(tmp / "audit.jsonl")], EXIT_OUTPUT_CLOSED),
    ("check-config", lambda tmp, port: ["check-config", *files(tmp)], EXIT_OUTPUT_CLOSED),
    ("check-config --json", lambda tmp, port: ["check-config", "--json", *files(tmp)], EXIT_OUTPUT_CLOSED),
    ("run --dry-run --once", lambda tmp, port: ["run", "--dry-run", "--once", *files(tmp)], EXIT_OUTPUT_CLOSED),
    ("run --dry-run (following)", lambda tmp, port: ["run", "--dry-run", *files(tmp)], EXIT_OUTPUT_CLOSED),
    ("health", lambda tmp, port: ["health", "--health-listen", f"127.0.0.1:{port}"], EXIT_OUTPUT_CLOSED),
    ("--help", lambda tmp, port: ["--help"], 0),
    ("--version", lambda tmp, port: ["--version"], 0),
    ("status --help", lambda tmp, port: ["status", "--help"], 0),
]


@pytest.mark.parametrize(("argv", "exit_code"), [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_a_closed_stdout_ends_the_command_quietly(
    tmp_path: Path, audit_cli: str, health_server: int, argv: Callable[[Path, int], list[str]], exit_code: int
) -> None:
    AuditWriter(tmp_path / "audit.jsonl").append(50)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte is written
    try:
        result = subprocess.run(
            [audit_cli, *argv(tmp_path, health_server)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=daemon_env(),
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == exit_code, result.stderr
    assert not (tmp_path / "cp.json").exists()  # none of these writes a checkpoint (dry run included)
