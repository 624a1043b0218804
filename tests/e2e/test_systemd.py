"""The shipped unit file: systemd accepts it, and its hardening scores an exposure of 1.5 or less."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector
from tests.helpers.paths import REPO

pytestmark = pytest.mark.systemd

UNIT = REPO / "systemd" / "audit-otlp.service"
MAX_EXPOSURE = 1.5


@pytest.fixture(autouse=True)
def _need_systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (tests/run installs the systemd package)")


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_passes_systemd_analyze_verify(tmp_path: Path, audit_cli: str) -> None:
    # verify insists that ExecStart's binary exists; check an identical copy whose ExecStart
    # names the installed console script instead of /usr/local/bin/audit-otlp.
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/audit-otlp run\n" in text
    copy = tmp_path / "audit-otlp.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/audit-otlp", f"ExecStart={audit_cli}"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=false", "--generators=false", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "audit-otlp.service" not in result.stderr, result.stderr  # no warnings about our unit either


def test_unit_security_exposure_is_at_most_1_5() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"exposure {exposure}", file=sys.stderr)
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_unit_is_notify_type_with_watchdog_state_directory_and_no_inline_secrets() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["Restart"] == ["on-failure"]
    assert s["ExecStart"][0].startswith("/")
    assert s["StateDirectory"] == ["audit-otlp"]  # -> $STATE_DIRECTORY -> checkpoint default
    assert re.fullmatch(r"\d+s", s["WatchdogSec"][0])
    assert s["ProtectSystem"] == ["strict"]  # the audit log is read-only to the service
    assert any(v.lstrip("-").startswith("/etc/audit-otlp/") for v in s["EnvironmentFile"])
    for value in s.get("Environment", []):
        name = value.split("=", 1)[0]
        assert not re.search(r"HEADERS|DSN|API_KEY|CHAIN_KEY|TOKEN|PASSWORD", name), value


def test_daemon_under_the_units_environment_keeps_its_checkpoint_in_state_directory(tmp_path: Path, audit_cli: str) -> None:
    """What systemd passes (StateDirectory= -> $STATE_DIRECTORY, an empty AUDIT_OTLP_CONFIG=) is
    what the daemon uses: the checkpoint lands in the state directory, nothing else is needed."""
    state = tmp_path / "var-lib-audit-otlp"
    state.mkdir(mode=0o700)
    AuditWriter(tmp_path / "audit.jsonl").append(3)
    with Collector() as collector:
        env = {
            **os.environ,
            "STATE_DIRECTORY": str(state),
            "AUDIT_OTLP_CONFIG": "",
            "AUDIT_OTLP_FILE": str(tmp_path / "audit.jsonl"),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.endpoint,
        }
        result = subprocess.run(
            [audit_cli, "run", "--once", "--deadline", "30"], env=env, cwd=state, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert len(collector.accepted_spans()) == 3
    assert (state / "checkpoint.json").exists()
    shown = subprocess.run([audit_cli, "check-config", "--json"], env=env, capture_output=True, text=True, timeout=60)
    doc = json.loads(shown.stdout)
    assert doc["values"]["checkpoint.path"] == str(state / "checkpoint.json")
    assert doc["origin"]["checkpoint.path"] == "env:STATE_DIRECTORY"
