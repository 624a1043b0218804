"""Run the installed `audit-otlp` as a subprocess the way an operator would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class Workdir:
    """One daemon's files: the audit log, the checkpoint, the dead-letter file."""

    root: Path

    @property
    def audit(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "state" / "checkpoint.json"

    def args(self, endpoint: str, *extra: str) -> list[str]:
        return ["run", "--file", str(self.audit), "--checkpoint", str(self.checkpoint), "--endpoint", endpoint, *extra]

    def checkpoint_doc(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.checkpoint.read_text())
        except FileNotFoundError:
            return None


def daemon_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUDIT_OTLP_", "SENTRY_", "DD_"))}
    # Fast retries keep the tests short; the defaults are tested in unit tests.
    env.update(extra)
    return env


def run_cli(cli: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cli, *args], capture_output=True, text=True, timeout=timeout, env=env or daemon_env(), **kw)


def start(cli: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([cli, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or daemon_env())


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 20) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"daemon did not stop within {timeout} s after signal {sig}:\n{err[-3000:]}")
    return proc.returncode, err


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)  # noqa: polls a condition with a deadline, not a fixed wait
    return predicate()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for health listeners and collectors)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
