"""podman on these machines, for the tests that build or boot images: one base-image cache.

There is no registry here, so the base image is made locally with debootstrap (Debian
bookworm's python3 and python3-venv, no pip in the system Python; see
/work/shared/container-build.md) and cached under /var/tmp/audit-otlp-base, so only the
first run pays for it (about 30 s). Every container test builds on that one base:
e2e/test_container.py (the Dockerfile), e2e/test_install_fresh.py (the README's first command)
and e2e/test_systemd_pid1.py (the unit under a real systemd). AUDIT_OTLP_BASE_IMAGE names
another base (e.g. python:3.12-slim where a registry is reachable)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

DEFAULT_CACHE = Path("/var/tmp/audit-otlp-base")
CACHE = Path(os.environ.get("AUDIT_OTLP_CONTAINER_CACHE", DEFAULT_CACHE))
# podman records the runroot in its storage and refuses another one later: keep the one that
# existing caches were made with, and give any other cache its own.
RUNROOT = "/tmp/audit-otlp-podman-run" + ("" if CACHE == DEFAULT_CACHE else f"-{CACHE.name}")
LOCAL_BASE = "localhost/audit-otlp-base:bookworm"
# crun fails on this host's hybrid cgroups; runc works.
PODMAN = (
    "podman",
    *("--root", str(CACHE / "storage")),
    *("--runroot", RUNROOT),
    *("--runtime", "runc"),
)
# Root here may not raise rlimits: without these the runtime fails in setrlimit.
RUN_FLAGS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")


def podman(*args: str, check: bool = True, timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*PODMAN, *args],
        check=False,
        capture_output=True,
        input=stdin,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def require_podman() -> None:
    """Skip (with the reason) where the local recipe cannot work; tests/run installs it."""
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


def _debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


def _make_rootfs(rootfs: Path) -> None:
    """debootstrap a minimal bookworm with python3 + venv; the host's CA bundle and pip.conf
    go in too, so that `pip install` inside trusts whatever TLS proxy this host uses."""
    tmp = rootfs.with_name(rootfs.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    bootstrap = [
        "debootstrap",
        "--variant=minbase",
        "bookworm",
        str(tmp),
        _debian_mirror(),
    ]
    subprocess.run(bootstrap, check=True, capture_output=True, timeout=900)
    shutil.copy("/etc/resolv.conf", tmp / "etc/resolv.conf")
    subprocess.run(["mount", "-t", "proc", "proc", str(tmp / "proc")], check=True)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["chroot", str(tmp), "apt-get"]
        subprocess.run([*apt, "update", "-qq"], check=True, capture_output=True, timeout=600)
        install = [
            *apt,
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            *BASE_PACKAGES,
        ]
        subprocess.run(install, check=True, capture_output=True, env=env, timeout=900)
        subprocess.run([*apt, "clean"], check=True)
    finally:
        subprocess.run(["umount", str(tmp / "proc")], check=False)
    shutil.rmtree(tmp / "var/lib/apt/lists", ignore_errors=True)
    for host_file in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"):
        if Path(host_file).exists():
            shutil.copy(host_file, tmp / host_file.lstrip("/"))
    tmp.rename(rootfs)


def ensure_base() -> str:
    """The base image's name, made (once, under a lock) when it is not cached yet."""
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
        importer = f"{' '.join(PODMAN)} import - {LOCAL_BASE}"
        pipeline = f"set -o pipefail; tar -C {rootfs} -c . | {importer}"
        result = subprocess.run(
            ["bash", "-c", pipeline],
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"podman import failed: {result.stderr}"
    return LOCAL_BASE


def build_image(tag: str, containerfile: Path | None = None) -> str:
    """Build `tag` from the repository (its .dockerignore applies) on the cached base."""
    base = ensure_base()
    started = time.monotonic()
    recipe = ("-f", str(containerfile)) if containerfile else ()
    podman(
        *("build", "--isolation", "chroot", "--format", "docker", *recipe),
        *("--build-arg", f"BASE_IMAGE={base}", "-t", tag, str(REPO)),
        timeout=900,
    )
    print(f"\nimage build ({tag}): {time.monotonic() - started:.1f} s")
    podman("image", "prune", "-f", check=False)  # the previous build's untagged layers
    return tag
