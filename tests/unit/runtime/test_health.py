"""/healthz, /readyz and /metrics answers in each state, and the `health` command against the real
daemon: ready once delivering, not ready when exports fail for longer than health.failing_after."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from audit_otlp.runtime.health import LOOP_STALL_LIMIT, HealthServer
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.runstate import RunState
from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector, Reply
from tests.helpers.wait import free_port, wait_until


async def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def ready_state() -> RunState:
    state = RunState()
    state.checkpoint_loaded = True
    state.file_reachable = True
    return state


@pytest.fixture
async def server():
    servers: list[HealthServer] = []

    async def start(state: RunState, failing_after: float = 60.0) -> HealthServer:
        srv = HealthServer("127.0.0.1", 0, state, Metrics(state), failing_after)
        await srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        await srv.aclose()


async def test_healthz_follows_the_event_loop_heartbeat(server) -> None:
    state = ready_state()
    srv = await server(state)
    assert (await get(srv.port, "/healthz"))[0] == 200
    state.loop_heartbeat = time.monotonic() - LOOP_STALL_LIMIT - 1  # the heartbeat task stopped running
    status, body = await get(srv.port, "/healthz")
    assert status == 503 and json.loads(body)["status"] == "stalled"


@pytest.mark.parametrize(
    "breakage,failed_check",
    [
        (lambda s: setattr(s, "checkpoint_loaded", False), "checkpoint_loaded"),
        (lambda s: setattr(s, "file_reachable", False), "file_reachable"),
        (lambda s: (s.export_failed("HTTP 503"), setattr(s, "failing_since", time.monotonic() - 61)), "exports_ok"),
        (lambda s: setattr(s, "checkpoint_error", "cannot write checkpoint: No space left on device"), "checkpoint_writable"),
    ],
    ids=["checkpoint-not-loaded", "file-unreachable", "exports-failing-too-long", "checkpoint-unwritable"],
)
async def test_readyz_fails_for_each_unready_state(server, breakage, failed_check: str) -> None:
    state = ready_state()
    srv = await server(state)
    status, body = await get(srv.port, "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    breakage(state)
    status, body = await get(srv.port, "/readyz")
    doc = json.loads(body)
    assert status == 503 and doc["ready"] is False and doc[failed_check] is False
    assert [k for k, v in doc.items() if v is False and k != "ready"] == [failed_check]
    assert (await get(srv.port, "/healthz"))[0] == 200  # liveness is another question


async def test_recent_failures_do_not_make_it_unready_yet(server) -> None:
    state = ready_state()
    state.export_failed("HTTP 503")
    srv = await server(state, failing_after=60)
    assert (await get(srv.port, "/readyz"))[0] == 200


async def test_metrics_unknown_paths_and_methods(server) -> None:
    srv = await server(ready_state())
    status, body = await get(srv.port, "/metrics")
    assert status == 200 and b"audit_otlp_spans_delivered_total" in body
    assert (await get(srv.port, "/nope"))[0] == 404
    assert (await get(srv.port, "/healthz", "POST"))[0] == 405


# -- end to end ------------------------------------------------------------------------------


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_daemon_health_ready_then_unready_while_collector_fails(tmp_path: Path, audit_cli: str) -> None:
    writer = AuditWriter(tmp_path / "audit.jsonl")
    writer.append(5)
    (tmp_path / "c.toml").write_text(
        '[health]\nfailing_after = "1s"\n[retry]\ninitial_backoff = "100ms"\nmax_backoff = "200ms"\n'
    )
    failing = threading.Event()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with Collector(lambda doc, n: Reply(503, b"down") if failing.is_set() else Reply()) as collector:
        proc = subprocess.Popen(
            [
                audit_cli,
                "run",
                "--config",
                str(tmp_path / "c.toml"),
                "--file",
                str(tmp_path / "audit.jsonl"),
                "--checkpoint",
                str(tmp_path / "cp.json"),
                "--endpoint",
                collector.endpoint,
                "--health-listen",
                f"127.0.0.1:{port}",
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            assert collector.wait_for_spans(5)
            assert wait_until(lambda: http_get(base + "/readyz")[0] == 200)
            health = subprocess.run(
                [audit_cli, "health", "--health-listen", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30
            )
            assert health.returncode == 0 and json.loads(health.stdout)["status"] == "ok"
            assert wait_until(lambda: "audit_otlp_spans_delivered_total 5.0" in http_get(base + "/metrics")[1])

            failing.set()
            writer.append(1)
            assert wait_until(lambda: http_get(base + "/readyz")[0] == 503)
            doc = json.loads(http_get(base + "/readyz")[1])
            assert doc["exports_ok"] is False and "503" in doc["last_error"]
            ready = subprocess.run(
                [audit_cli, "health", "--ready", "--health-listen", f"127.0.0.1:{port}"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert ready.returncode == 1
            assert http_get(base + "/healthz")[0] == 200  # alive, just not delivering

            failing.clear()
            assert collector.wait_for_spans(6)
            assert wait_until(lambda: http_get(base + "/readyz")[0] == 200)
        finally:
            proc.terminate()
            proc.wait(20)
    assert proc.returncode == 0


def test_health_command_without_a_daemon_fails_clearly(audit_cli: str) -> None:
    port = free_port()
    result = subprocess.run(
        [audit_cli, "health", "--health-listen", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1 and f"127.0.0.1:{port}/healthz" in result.stderr
    env = {k: v for k, v in os.environ.items() if k != "AUDIT_OTLP_HEALTH_LISTEN"}
    result = subprocess.run([audit_cli, "health"], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2 and "health.listen" in result.stderr
