"""Prompt shutdown, with the installed daemon as a subprocess: on SIGTERM/SIGINT the requests that
wait in backoff are abandoned at once (no collector accepted them, so nothing is lost: the next
run sends them), only a request really on the wire gets `shutdown.grace_period`, and a second
signal stops at once. Each scenario checks the exit code, what the log says, that the checkpoint
did not move past an unacknowledged row, and that a later run delivers every row."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector, Reply
from tests.helpers.daemon import DaemonProcess, daemon_env, run_cli, write_config
from tests.helpers.wait import free_port, wait_until

ROWS = 30


def start_daemon(tmp_path: Path, audit_cli: str, endpoint: str, grace: str, **sections: dict[str, object]) -> DaemonProcess:
    AuditWriter(tmp_path / "audit.jsonl").append(ROWS)
    config = write_config(tmp_path / "daemon.toml", shutdown={"grace_period": grace}, checkpoint={"interval": "20ms"}, **sections)
    daemon = DaemonProcess(audit_cli, tmp_path / "audit.jsonl", tmp_path / "cp.json", endpoint, tmp_path / "daemon.log", config)
    return daemon.start()


def stop_and_time(daemon: DaemonProcess, sig: int) -> tuple[int, float]:
    started = time.monotonic()
    code = daemon.stop(sig, timeout=120)
    return code, time.monotonic() - started


def deliver_everything_later(tmp_path: Path, audit_cli: str) -> None:
    """A later run against a collector that answers: every row arrives, none was lost."""
    with Collector() as collector:
        result = run_cli(
            audit_cli,
            ["run", "--once", "--file", str(tmp_path / "audit.jsonl"), "--checkpoint", str(tmp_path / "cp.json")]
            + ["--endpoint", collector.endpoint],
            env=daemon_env(),
        )
        assert result.returncode == 0, result.stderr
        assert sorted(set(collector.accepted_seqs())) == list(range(1, ROWS + 1))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_requests_waiting_to_retry_are_abandoned_at_once_when_the_collector_is_down(
    tmp_path: Path, audit_cli: str, sig: int
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/v1/traces"  # nothing listens there
    # Long backoffs, so requests spend their time waiting to retry; a grace period far longer than
    # the time the test allows for the stop.
    daemon = start_daemon(tmp_path, audit_cli, endpoint, "60s", retry={"initial_backoff": "5s", "max_backoff": "30s"})
    with daemon:
        assert wait_until(lambda: daemon.metrics().get("audit_otlp_export_retries_total", 0) >= 2, 30), daemon.log_text()
        code, took = stop_and_time(daemon, sig)
    log = daemon.log_text()
    assert code == 0, log
    assert took < 30, f"waited {took:.1f} s for requests that were only waiting to retry:\n{log}"
    # The one request is waiting to retry (or, by a rare chance, in its millisecond of connecting).
    assert re.search(r"on the wire: none; waiting to retry: 1 \(abandoned at once\)|on the wire: 1 request", log), log
    assert "abandoning" not in log and "Traceback" not in log, log
    assert daemon.checkpoint_offset() == 0  # nothing was acknowledged, so nothing is skipped
    deliver_everything_later(tmp_path, audit_cli)


@pytest.fixture
def hanging_collector() -> Iterator[tuple[Collector, threading.Event]]:
    """A collector that reads each request and then does not answer until the test is over."""
    arrived, release = threading.Event(), threading.Event()

    def responder(doc: dict[str, object], n: int) -> Reply:
        arrived.set()
        release.wait(120)
        return Reply(503)

    with Collector(responder) as collector:
        try:
            yield collector, arrived
        finally:
            release.set()


def test_a_request_on_the_wire_gets_the_grace_period_then_is_abandoned(
    tmp_path: Path, audit_cli: str, hanging_collector: tuple[Collector, threading.Event]
) -> None:
    collector, arrived = hanging_collector
    daemon = start_daemon(
        tmp_path, audit_cli, collector.endpoint, "1500ms", export={"timeout": "120s", "max_in_flight": 1}, batch={"max_spans": 10}
    )
    with daemon:
        assert arrived.wait(30), daemon.log_text()
        code, took = stop_and_time(daemon, signal.SIGTERM)
    log = daemon.log_text()
    assert code == 0, log
    assert took >= 1.5, f"the request on the wire did not get its grace period ({took:.2f} s):\n{log}"
    assert "on the wire: 1 request (up to 1.5 s to be answered)" in log, log
    assert "grace period over: abandoning 1 request on the wire (never acknowledged: sent again next run)" in log, log
    assert daemon.checkpoint_offset() == 0
    deliver_everything_later(tmp_path, audit_cli)


def test_a_second_signal_stops_at_once_without_waiting_for_the_grace_period(
    tmp_path: Path, audit_cli: str, hanging_collector: tuple[Collector, threading.Event]
) -> None:
    collector, arrived = hanging_collector
    daemon = start_daemon(tmp_path, audit_cli, collector.endpoint, "120s", export={"timeout": "300s", "max_in_flight": 2})
    with daemon:
        assert arrived.wait(30), daemon.log_text()
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGINT)
        assert wait_until(lambda: "stopping: no more reading" in daemon.log_text(), 30), daemon.log_text()
        code, took = stop_and_time(daemon, signal.SIGINT)  # the second Ctrl-C
    log = daemon.log_text()
    assert code == 0, log
    assert took < 60, f"the second signal waited {took:.1f} s (grace period 120 s):\n{log}"
    assert "stopping at once: abandoning" in log and "on the wire (never acknowledged: sent again next run)" in log, log
    assert "stopped: " in log, log  # the ordered shutdown still ran: checkpoint flushed, files closed
    assert daemon.checkpoint_offset() == 0
    deliver_everything_later(tmp_path, audit_cli)
