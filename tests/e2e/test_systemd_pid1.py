"""The shipped unit under a real systemd: PID 1 of a podman container (--systemd=always).

The image (systemd-pid1.Containerfile) is the cached debootstrap base plus Debian's systemd,
with audit-otlp installed as the README says (a venv in /opt/audit-otlp linked from
/usr/local/bin, so the unit's ExecStart is used unchanged) and systemd/audit-otlp.service
and the env file copied into /etc. Each test boots its own machine on the host network (its
collector listens on the host's loopback), the audit log on a read-only bind mount at the
unit's default path, /var/lib/agent/audit.jsonl. The full hardening of the unit applies
(DynamicUser, ProtectSystem=strict, the seccomp filter): podman's default capabilities are
enough for systemd to set up the namespaces.

Changed for the tests, by drop-in, and only there: RestartSec=1s (from 5s) everywhere, and
WatchdogSec=3s (from 30s) in the watchdog test, so that restarts take seconds."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector
from tests.helpers.podman import PODMAN, RUN_FLAGS, build_image, podman, require_podman
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.container, pytest.mark.systemd, pytest.mark.timeout(900)]

IMAGE = "localhost/audit-otlp-systemd:test"
CONTAINERFILE = Path(__file__).with_name("systemd-pid1.Containerfile")
UNIT = "audit-otlp.service"
DROP_IN = f"/etc/systemd/system/{UNIT}.d"
CHECKPOINT = "/var/lib/audit-otlp/checkpoint.json"  # StateDirectory= -> $STATE_DIRECTORY


@dataclass
class Machine:
    """One booted container: systemctl, the journal and the state directory, seen from outside."""

    name: str
    writer: AuditWriter
    collector: Collector

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> str:
        return podman("exec", self.name, "sh", "-c", script, check=check, timeout=timeout).stdout

    def show(self, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_show(
        self,
        predicate: Callable[[dict[str, str]], bool],
        *props: str,
        timeout: float = 60,
    ) -> dict[str, str]:
        seen: list[dict[str, str]] = []

        def holds() -> bool:
            seen.append(self.show(*props))
            return predicate(seen[-1])

        assert wait_until(holds, timeout, interval=0.2), f"{seen[-1:]}\n{self.journal()[-3000:]}"
        return seen[-1]

    def drop_in(self, name: str, text: str) -> None:
        self.sh(f"mkdir -p {DROP_IN} && cat > {DROP_IN}/{name}.conf <<'EOF'\n{text}EOF\nsystemctl daemon-reload")

    def journal(self) -> str:
        return self.sh(f"journalctl -u {UNIT} --no-pager -o cat", check=False)

    def checkpoint(self) -> dict[str, Any] | None:
        text = self.sh(f"cat {CHECKPOINT} 2>/dev/null", check=False)
        return json.loads(text) if text.strip() else None

    def wait_checkpoint(self, delivered: int, timeout: float = 60) -> None:
        def reached() -> bool:
            doc = self.checkpoint()
            return doc is not None and doc["delivered_spans"] == delivered

        assert wait_until(reached, timeout, interval=0.2), f"{self.checkpoint()}\n{self.journal()}"

    def wait_delivered(self, seqs: list[int], timeout: float = 60) -> None:
        arrived = self.collector.wait_for(lambda c: sorted(set(c.accepted_seqs())) == seqs, timeout)
        assert arrived, f"{sorted(set(self.collector.accepted_seqs()))}\n{self.journal()[-3000:]}"


@pytest.fixture(scope="module")
def image() -> str:
    require_podman()
    return build_image(IMAGE, CONTAINERFILE)


@pytest.fixture
def machine(image: str, tmp_path: Path) -> Iterator[Machine]:
    agent = tmp_path / "agent"
    agent.mkdir(mode=0o755)
    agent.chmod(0o755)  # the service's dynamic user must reach the log
    name = f"audit-otlp-systemd-{uuid.uuid4().hex[:8]}"
    with Collector() as collector:
        podman(
            *(
                "run",
                "-d",
                "--name",
                name,
                "--systemd=always",
                "--network",
                "host",
                *RUN_FLAGS,
            ),
            *("-v", f"{agent}:/var/lib/agent:ro", image),
        )
        try:
            box = Machine(name, AuditWriter(agent / "audit.jsonl"), collector)

            def booted() -> bool:
                state = podman("exec", name, "systemctl", "is-system-running", check=False)
                return state.stdout.strip() in ("running", "degraded")

            assert wait_until(booted, 120, interval=0.2), podman("logs", name, check=False).stderr
            box.sh(f"echo OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={collector.endpoint} >> /etc/audit-otlp/env")
            box.drop_in("test-restart", "[Service]\nRestartSec=1s\n")
            yield box
        finally:
            podman("rm", "-f", "-t", "0", name, check=False)


def test_start_reports_active_running_only_after_ready(machine: Machine) -> None:
    """The daemon reads its TOML before it sends READY=1; a FIFO as the config file holds it
    there, running but not ready, for as long as the test wants."""
    machine.sh("mkfifo -m 0644 /etc/audit-otlp/config.toml")
    machine.drop_in(
        "test-config",
        "[Service]\nEnvironment=AUDIT_OTLP_CONFIG=/etc/audit-otlp/config.toml\n",
    )
    machine.writer.append(2)
    start = subprocess.Popen(
        [*PODMAN, "exec", machine.name, "systemctl", "start", UNIT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        props = ("ActiveState", "SubState", "MainPID")
        waiting = machine.wait_show(lambda p: p["MainPID"] != "0", *props)
        assert (waiting["ActiveState"], waiting["SubState"]) == ("activating", "start")
        assert start.poll() is None, "systemctl start returned before READY=1"
        assert machine.collector.accepted() == []

        # Opening the FIFO for writing and closing it: an empty TOML, and the daemon goes on.
        machine.sh(": > /etc/audit-otlp/config.toml")
        _, err = start.communicate(timeout=60)
        assert start.returncode == 0, err
    finally:
        if start.poll() is None:
            start.kill()
    timing = machine.show(
        "ActiveState",
        "SubState",
        "ExecMainStartTimestampMonotonic",
        "ActiveEnterTimestampMonotonic",
    )
    assert (timing["ActiveState"], timing["SubState"]) == ("active", "running")
    assert int(timing["ActiveEnterTimestampMonotonic"]) > int(timing["ExecMainStartTimestampMonotonic"])
    machine.wait_delivered([1, 2])


def test_status_line_journal_state_directory_and_clean_stop(machine: Machine) -> None:
    machine.writer.append(3)
    machine.sh(f"systemctl start {UNIT}")
    machine.wait_delivered([1, 2, 3])

    status = ""

    def status_shows_delivery() -> bool:
        nonlocal status
        status = machine.sh(f"systemctl status {UNIT} --no-pager", check=False)
        return 'Status: "delivered 3 spans of 3 rows read' in status

    assert wait_until(status_shows_delivery, 30, interval=0.5), status
    shown = ("Active:", "Main PID:", "Status:")
    print("\n" + "\n".join(line for line in status.splitlines() if line.strip().startswith(shown)))
    assert "active (running)" in status

    journal = machine.journal()
    assert f"following /var/lib/agent/audit.jsonl -> {machine.collector.endpoint}" in journal

    # StateDirectory=: /var/lib/audit-otlp (a link into /var/lib/private with DynamicUser=yes),
    # mode 0700, holding the checkpoint that names the rows delivered.
    machine.wait_checkpoint(3)
    listing = machine.sh("stat -L -c '%a %U' /var/lib/audit-otlp; stat -c '%U' " + CHECKPOINT)
    mode_owner, file_owner = listing.split("\n")[:2]
    assert mode_owner.split()[0] == "700" and file_owner != "root", listing

    machine.sh(f"systemctl stop {UNIT}")
    stopped = machine.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert stopped == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainStatus": "0",
        "NRestarts": "0",
    }
    assert "stopped: delivered 3 spans" in machine.journal()


def test_sigkill_of_main_process_restarts_it_and_delivery_resumes_from_checkpoint(
    machine: Machine,
) -> None:
    machine.writer.append(4)
    machine.sh(f"systemctl start {UNIT}")
    machine.wait_delivered([1, 2, 3, 4])
    machine.wait_checkpoint(4)
    killed = machine.show("MainPID")["MainPID"]

    machine.sh(f"kill -KILL {killed}")
    machine.writer.append(3)  # written while the service is down or restarting
    restarted = machine.wait_show(
        lambda p: p["NRestarts"] == "1" and p["ActiveState"] == "active" and p["MainPID"] not in ("0", killed),
        "NRestarts",
        "ActiveState",
        "MainPID",
    )
    machine.wait_delivered(list(range(1, 8)))
    # Resumed after the checkpoint's row 4: nothing lost, nothing sent twice.
    assert sorted(machine.collector.accepted_seqs()) == list(range(1, 8))
    machine.wait_checkpoint(7)
    journal = machine.journal()
    assert "status=9/KILL" in journal and "Scheduled restart job" in journal, journal
    print(f"\nSIGKILL of {killed}: restarted as {restarted['MainPID']}, rows 5-7 delivered after it")
    print(_systemd_lines(journal, "status=9/KILL", "Scheduled restart", "following"))


def test_stopped_watchdog_gets_the_service_restarted(machine: Machine) -> None:
    machine.drop_in("test-watchdog", "[Service]\nWatchdogSec=3s\n")
    machine.writer.append(2)
    machine.sh(f"systemctl start {UNIT}")
    machine.wait_delivered([1, 2])
    machine.wait_checkpoint(2)
    stopped = machine.show("MainPID")["MainPID"]

    machine.sh(f"kill -STOP {stopped}")  # alive but silent: no more WATCHDOG=1
    machine.wait_show(
        lambda p: p["NRestarts"] == "1" and p["ActiveState"] == "active" and p["MainPID"] not in ("0", stopped),
        "NRestarts",
        "ActiveState",
        "MainPID",
        timeout=90,
    )
    journal = machine.journal()
    assert "Watchdog timeout" in journal and "Failed with result 'watchdog'" in journal, journal
    print("\n" + _systemd_lines(journal, "Watchdog timeout", "Killing process", "result", "Scheduled restart"))
    machine.writer.append(2)
    machine.wait_delivered([1, 2, 3, 4])
    assert sorted(machine.collector.accepted_seqs()) == [1, 2, 3, 4]


def _systemd_lines(journal: str, *needles: str) -> str:
    """The journal lines that show what happened, for the test's output."""
    return "\n".join(line for line in journal.splitlines() if any(n in line for n in needles))
