"""Build the image from the repository's Dockerfile and run it as a sidecar would run: read-only
root filesystem, the audit log on a read-only volume, state on a writable one, the collector on the
host network. Needs root and podman (tests/run installs it); skipped otherwise.

The base image is the debootstrap one that tests/helpers/podman.py makes and caches (measured on a
quiet machine: 40 s for the whole test from nothing, 14 s with the base cached)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector
from tests.helpers.podman import RUN_FLAGS, build_image, podman, require_podman
from tests.helpers.wait import free_port, wait_until

# The first run debootstraps the base (about a minute); later runs reuse it.
pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

IMAGE = "localhost/audit-otlp:test"
UID = 10001  # the image's USER


@pytest.fixture(scope="module")
def image() -> str:
    require_podman()
    build_image(IMAGE)
    size = podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip()
    print(f"image size: {int(size) / 1e6:.0f} MB")
    return IMAGE


def test_image_runs_read_only_as_sidecar_delivers_and_stops_gracefully(image: str, tmp_path: Path) -> None:
    audit_dir, state_dir = tmp_path / "audit", tmp_path / "state"
    audit_dir.mkdir()
    state_dir.mkdir()
    os.chmod(audit_dir, 0o755)
    os.chown(state_dir, UID, UID)
    writer = AuditWriter(audit_dir / "audit.jsonl")
    writer.append(5)
    port = free_port()
    name = f"audit-otlp-test-{uuid.uuid4().hex[:8]}"
    with Collector() as collector:
        started = time.monotonic()
        podman(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "--read-only",
            *RUN_FLAGS,
            "-v",
            f"{audit_dir}:/audit:ro",
            "-v",
            f"{state_dir}:/var/lib/audit-otlp",
            "-e",
            f"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={collector.endpoint}",
            "-e",
            f"AUDIT_OTLP_HEALTH_LISTEN=127.0.0.1:{port}",
            image,
        )
        try:
            assert collector.wait_for_spans(5, timeout=60), podman("logs", name, check=False).stderr
            print(f"first rows delivered {time.monotonic() - started:.1f} s after `podman run`")
            writer.append(3)  # the sidecar keeps following the shared file
            assert collector.wait_for(lambda c: sorted(set(c.accepted_seqs())) == list(range(1, 9)), timeout=30)
            assert not collector.invalid

            # The image's HEALTHCHECK (audit-otlp health -> /healthz) and the command by hand.
            assert wait_until(lambda: podman("healthcheck", "run", name, check=False).returncode == 0, 30, interval=0.2)
            ready = podman("exec", name, "audit-otlp", "health", "--ready", check=False)
            assert ready.returncode == 0, ready.stdout + ready.stderr
            assert json.loads(ready.stdout)["ready"] is True

            stop_started = time.monotonic()
            podman("stop", "-t", "10", name, timeout=60)
            stop_seconds = time.monotonic() - stop_started
            print(f"podman stop took {stop_seconds:.1f} s")
            state = json.loads(podman("inspect", name, "--format", "{{json .State}}").stdout)
            assert state["ExitCode"] == 0, state  # SIGTERM handled, not SIGKILLed after 10 s
            assert stop_seconds < 10

            # JSON logs on stderr by default; no line that is not JSON.
            logs = podman("logs", name).stderr.strip().splitlines()
            assert logs
            records = [json.loads(line) for line in logs]
            assert any("stopped" in r["message"] for r in records)

            # The checkpoint lives on the state volume and names the last delivered row.
            checkpoint = json.loads((state_dir / "checkpoint.json").read_text())
            assert checkpoint["delivered_spans"] == 8
            # Nothing was written to the read-only audit volume.
            assert sorted(p.name for p in audit_dir.iterdir()) == ["audit.jsonl"]
        finally:
            podman("rm", "-f", name, check=False)
