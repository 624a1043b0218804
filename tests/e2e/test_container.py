"""Build the image from the repository's Dockerfile and run it as a sidecar would run: read-only
root filesystem, the audit log on a read-only volume, state on a writable one, the collector on the
host network. Needs root and podman (tests/run installs it); skipped otherwise.

There is no registry here, so the base image is made locally with debootstrap (Debian's python3,
as /work/shared/container-build.md describes) and cached under /var/tmp/audit-otlp-base, so only
the first run pays for it (measured: 69 s for the whole test from nothing, 20 s with the base cached). AUDIT_OTLP_BASE_IMAGE names another base (e.g. python:3.12-slim
where a registry is reachable)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector
from tests.helpers.paths import REPO
from tests.helpers.wait import free_port, wait_until

# The first run debootstraps the base (about a minute); later runs reuse it.
pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

CACHE = Path(os.environ.get("AUDIT_OTLP_CONTAINER_CACHE", "/var/tmp/audit-otlp-base"))
LOCAL_BASE = "localhost/audit-otlp-base:bookworm"
IMAGE = "localhost/audit-otlp:test"
UID = 10001  # the image's USER


def podman_cmd() -> list[str]:
    return ["podman", "--root", str(CACHE / "storage"), "--runroot", "/tmp/audit-otlp-podman-run", "--runtime", "runc"]


RUN_FLAGS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]  # root here may not raise rlimits


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*podman_cmd(), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


def _make_rootfs(rootfs: Path) -> None:
    """debootstrap a minimal bookworm with python3 + venv; the host's CA bundle and pip.conf go in
    too, so that `pip install` inside the build trusts whatever TLS proxy this host uses."""
    tmp = rootfs.with_name(rootfs.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(tmp), _debian_mirror()], check=True, capture_output=True, timeout=900
    )
    shutil.copy("/etc/resolv.conf", tmp / "etc/resolv.conf")
    subprocess.run(["mount", "-t", "proc", "proc", str(tmp / "proc")], check=True)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["chroot", str(tmp), "apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
        subprocess.run(
            [
                "chroot",
                str(tmp),
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "python3",
                "python3-venv",
                "ca-certificates",
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=900,
        )
        subprocess.run(["chroot", str(tmp), "apt-get", "clean"], check=True)
    finally:
        subprocess.run(["umount", str(tmp / "proc")], check=False)
    shutil.rmtree(tmp / "var/lib/apt/lists", ignore_errors=True)
    for host_file in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"):
        if Path(host_file).exists():
            shutil.copy(host_file, tmp / host_file.lstrip("/"))
    tmp.rename(rootfs)


def ensure_base() -> str:
    if os.environ.get("AUDIT_OTLP_BASE_IMAGE"):
        return os.environ["AUDIT_OTLP_BASE_IMAGE"]
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time
        if podman("image", "exists", LOCAL_BASE, check=False).returncode == 0:
            return LOCAL_BASE
        rootfs = CACHE / "rootfs"
        if not rootfs.exists():
            _make_rootfs(rootfs)
        pipeline = f"set -o pipefail; tar -C {rootfs} -c . | {' '.join(podman_cmd())} import - {LOCAL_BASE}"
        result = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"podman import failed: {result.stderr}"
    return LOCAL_BASE


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (tests/run installs it on Debian)")
    if os.geteuid() != 0:
        pytest.skip("the local podman recipe needs root")
    if (
        not os.environ.get("AUDIT_OTLP_BASE_IMAGE")
        and shutil.which("debootstrap") is None
        and podman("image", "exists", LOCAL_BASE, check=False).returncode != 0
    ):
        pytest.skip("debootstrap is not installed and no base image is cached")
    base = ensure_base()
    started = time.monotonic()
    podman(
        "build",
        "--isolation",
        "chroot",
        "--format",
        "docker",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-t",
        IMAGE,
        str(REPO),
        timeout=900,
    )
    print(f"\nimage build: {time.monotonic() - started:.1f} s")
    podman("image", "prune", "-f", check=False)  # drop the previous build's untagged layers
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
