"""End to end against a real GenAI trace backend: Arize Phoenix (`phoenix serve`, OTLP/HTTP,
protobuf only; it answers OTLP/JSON with 415). The installed daemon delivers a small audit log
with `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf`, and Phoenix's own REST API, on
loopback, must then hold every span in the project named by `openinference.project.name`,
with the OpenInference span kind the mapping sets and the tool arguments and result.

Phoenix (about 850 MB) lives in its own virtualenv, so its pins never move the project's test
dependencies; `tests/run` installs it (see AUDIT_OTLP_PHOENIX there). Phoenix answers 200
before it has stored a span (its inserter runs apart), so the test waits for the spans.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.daemon import Workdir, daemon_env, run_cli
from tests.helpers.paths import REPO
from tests.helpers.wait import free_port, wait_until

pytestmark = [pytest.mark.phoenix, pytest.mark.timeout(600)]

PROJECT = "audit-otlp-e2e"
START_TIMEOUT = 240.0  # a first start creates and migrates its database: ~40 s on a busy 2-core box


def phoenix_command() -> str:
    """The `phoenix` executable: AUDIT_OTLP_PHOENIX (tests/run sets it), else .venv-phoenix."""
    if os.environ.get("AUDIT_OTLP_SKIP_PHOENIX") == "1":
        pytest.skip("AUDIT_OTLP_SKIP_PHOENIX=1")
    configured = os.environ.get("AUDIT_OTLP_PHOENIX")
    command = Path(configured) if configured else REPO / ".venv-phoenix" / "bin" / "phoenix"
    if command.exists():
        return str(command)
    if configured or os.environ.get("CI"):  # installed by the setup: its absence is a failure
        pytest.fail(f"Phoenix is not installed at {command} (tests/run installs it)")
    pytest.skip("Phoenix is not installed: `bash tests/run tests/e2e/test_phoenix.py` installs it")


class Phoenix:
    def __init__(self, base: str) -> None:
        self.base = base
        self.traces = f"{base}/v1/traces"

    def spans(self, project: str) -> list[dict[str, Any]]:
        """Every span Phoenix has stored in `project` (its REST API, paged)."""
        spans: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            answer = httpx.get(f"{self.base}/v1/projects/{project}/spans", params=params, timeout=10)
            if answer.status_code == 404:  # the project appears with its first span
                return []
            answer.raise_for_status()
            page = answer.json()
            spans += page["data"]
            cursor = page.get("next_cursor")
            if not cursor:
                return spans


@pytest.fixture(scope="module")
def phoenix() -> Iterator[Phoenix]:
    command = phoenix_command()
    port, grpc_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="phoenix-") as workdir:
        env = {
            **os.environ,
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(port),
            "PHOENIX_GRPC_PORT": str(grpc_port),
            "PHOENIX_WORKING_DIR": workdir,  # its SQLite database, gone with the test
            "PHOENIX_TELEMETRY_ENABLED": "false",
        }
        log = Path(workdir) / "phoenix.log"
        with log.open("wb") as out:
            server = subprocess.Popen([command, "serve"], stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            started = time.monotonic()
            if (
                not wait_until(lambda: _healthy(base) or server.poll() is not None, START_TIMEOUT, 0.5)
                or server.poll() is not None
            ):
                pytest.fail(f"phoenix serve did not come up:\n{log.read_text(errors='replace')[-3000:]}")
            print(f"phoenix up in {time.monotonic() - started:.1f} s")
            yield Phoenix(base)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# (row fields, the span kind Phoenix must show) — the mapping's openinference.span.kind.
ROWS: list[tuple[dict[str, Any], str]] = [
    ({"tool": "Write", "target": "src/app.py", "policy_outcome": "allowed"}, "TOOL"),
    ({"tool": "Bash", "target": "ls -la", "duration_ms": 12}, "TOOL"),
    ({"event": "secret_detected", "tool": None, "target": None, "file": "cfg.env",
      "pattern_id": "aws-access-key-id", "severity": "critical", "masked": "AKIA...MPLE"}, "GUARDRAIL"),
    ({"event": "action_blocked", "tool": None, "target": None, "reason": "rm -rf /", "severity": "critical"},
     "GUARDRAIL"),
    ({"tool": "Bash", "target": "curl evil.example", "policy_outcome": "blocked"}, "GUARDRAIL"),
    ({"event": "session_start", "tool": None, "target": None}, "CHAIN"),
    ({"event": "invoke_workflow_step", "tool": None}, "CHAIN"),
]  # fmt: skip


def test_spans_arrive_in_the_named_project_with_their_kinds(phoenix: Phoenix, audit_cli: str, tmp_path: Path) -> None:
    work = Workdir(tmp_path)
    writer = AuditWriter(work.audit)
    for fields, _ in ROWS:
        writer.append(1, **fields)
    offsets = [0]
    for line in work.audit.read_bytes().splitlines(keepends=True)[:-1]:
        offsets.append(offsets[-1] + len(line))
    expected = {offset: kind for offset, (_, kind) in zip(offsets, ROWS)}
    env = daemon_env(
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/protobuf",
        OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={PROJECT},deployment.environment=e2e",
    )
    started = time.monotonic()
    done = run_cli(audit_cli, work.args(phoenix.traces, "--once", "--deadline", "120"), env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    # A 2xx from Phoenix means "received": it stores the spans a moment later.
    assert wait_until(lambda: len(phoenix.spans(PROJECT)) >= len(ROWS), timeout=60, interval=0.5), phoenix.spans(PROJECT)
    print(f"delivered and stored in {time.monotonic() - started:.1f} s")
    stored = {span["attributes"]["audit.offset"]: span for span in phoenix.spans(PROJECT)}
    assert len(stored) == len(ROWS)
    assert phoenix.spans("default") == []  # nothing in Phoenix's default project
    assert {offset: span["span_kind"] for offset, span in stored.items()} == expected

    write = stored[offsets[0]]
    assert write["name"] == "execute_tool Write"
    assert write["attributes"]["gen_ai.tool.call.arguments"] == "src/app.py"
    assert write["attributes"]["gen_ai.tool.call.result"] == "allowed"
    # ... and Phoenix read them: the tool's parameters and the span's output column.
    assert write["attributes"]["tool.parameters"] == "src/app.py" and write["attributes"]["output.value"] == "allowed"
    assert stored[offsets[3]]["status_code"] == "ERROR"  # the blocked action
