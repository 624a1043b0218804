"""sd_notify as systemd sees it: a datagram socket the test owns receives READY, STATUS, WATCHDOG
and STOPPING, in that order, from the real daemon started as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from audit_otlp.runtime.sdnotify import Notifier
from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector


class NotifyListener:
    """What systemd does with NOTIFY_SOCKET: bind a datagram socket and collect the messages."""

    def __init__(self, abstract: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"audit-otlp-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self._dir = tempfile.mkdtemp(prefix="sdn", dir="/tmp")  # sun_path is short (108 bytes)
            self.address = os.path.join(self._dir, "notify")
            self.sock.bind(self.address)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate(self.messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return predicate(self.messages)
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line))
        return True

    def first(self, key: str) -> int:
        return next(i for i, m in enumerate(self.messages) if key in m)

    def close(self) -> None:
        self.sock.close()


def has(key: str, value: str | None = None):
    return lambda msgs: any(key in m and (value is None or m[key] == value) for m in msgs)


@pytest.mark.parametrize("abstract", [True, False], ids=["abstract-socket", "path-socket"])
def test_daemon_sends_ready_status_watchdog_stopping_in_order(tmp_path: Path, audit_cli: str, abstract: bool) -> None:
    listener = NotifyListener(abstract)
    writer = AuditWriter(tmp_path / "audit.jsonl")
    writer.append(3)
    with Collector() as collector:
        env = {**os.environ, "NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"}
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen(
            [
                audit_cli,
                "run",
                "--file",
                str(tmp_path / "audit.jsonl"),
                "--checkpoint",
                str(tmp_path / "state/cp.json"),
                "--endpoint",
                collector.endpoint,
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert listener.wait_for(has("READY", "1"), 20), listener.messages
            assert collector.wait_for_spans(3)
            writer.append(2)
            assert collector.wait_for_spans(5)
            # STATUS is refreshed: a later one reports the delivered rows.
            assert listener.wait_for(lambda ms: any("delivered 5 " in m.get("STATUS", "") for m in ms), 20), listener.messages
            # The watchdog is kicked repeatedly (every WATCHDOG_USEC/2) from the event loop.
            assert listener.wait_for(lambda ms: sum("WATCHDOG" in m for m in ms) >= 3, 20), listener.messages
            proc.send_signal(signal.SIGTERM)
            assert listener.wait_for(has("STOPPING", "1"), 20), listener.messages
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            listener.close()
    msgs = listener.messages
    ready, stopping = listener.first("READY"), listener.first("STOPPING")
    assert ready == 0, msgs  # nothing before READY=1
    assert "backlog" in msgs[ready]["STATUS"]
    watchdogs = [i for i, m in enumerate(msgs) if "WATCHDOG" in m]
    assert ready < watchdogs[0] and watchdogs[-1] < stopping
    refreshes = [i for i, m in enumerate(msgs) if "STATUS" in m and "READY" not in m and "STOPPING" not in m]
    assert refreshes and ready < refreshes[0] and refreshes[-1] < stopping
    assert not any("READY" in m or "WATCHDOG" in m for m in msgs[stopping + 1 :])  # nothing after STOPPING but STATUS


def test_ready_is_sent_while_the_audit_log_does_not_exist_yet(tmp_path: Path, audit_cli: str) -> None:
    """A service must not fail to start just because the agent has not written its first row yet."""
    listener = NotifyListener()
    with Collector() as collector:
        env = {**os.environ, "NOTIFY_SOCKET": listener.address}
        proc = subprocess.Popen(
            [
                audit_cli,
                "run",
                "--file",
                str(tmp_path / "audit.jsonl"),
                "--checkpoint",
                str(tmp_path / "cp.json"),
                "--endpoint",
                collector.endpoint,
            ],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert listener.wait_for(has("READY", "1"), 20), listener.messages
            assert "waiting for" in listener.messages[0]["STATUS"]
            AuditWriter(tmp_path / "audit.jsonl").append(2)
            assert collector.wait_for_spans(2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            listener.close()


def test_notifier_is_silent_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")  # no socket, no error


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_our_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert Notifier("").watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier("").watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert Notifier("").watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    monkeypatch.delenv("WATCHDOG_PID")
    assert Notifier("").watchdog_interval() is None
