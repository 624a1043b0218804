"""The README's first command, exactly as written there, on a clean Debian bookworm.

A newcomer's machine: Debian's python3 and python3-venv only, no pip in the system Python
(which is marked externally managed, PEP 668), the repository as a fresh checkout. The
command must install and start the daemon on its embedded defaults: follow
`state/audit.jsonl`, send to http://localhost:4318/v1/traces. The collector listens there
on the host's loopback (the container shares the host network); pip fetches the
dependencies from the package index, as it would for the user."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector
from tests.helpers.paths import REPO
from tests.helpers.podman import RUN_FLAGS, ensure_base, podman, require_podman

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

DEFAULT_PORT = 4318  # the daemon's embedded default endpoint: http://localhost:4318/v1/traces
INSTALL_TIMEOUT = 300.0  # venv + pip install from the package index, on a loaded machine


def readme_commands() -> list[str]:
    """The commands of the README's "The two commands" block, without their comments."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The two commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "README.md: no ```sh block under 'The two commands'"
    lines = [line.strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


# Outside a git checkout (an unpacked archive), everything but what a checkout never holds.
NOT_IN_A_CHECKOUT = (
    ".venv",
    "venv",
    "build",
    "dist",
    "state",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".ruff_cache",
    ".mypy_cache",
)


def copy_checkout(dest: Path) -> None:
    """What a fresh clone holds: tracked files plus new ones not ignored (no .venv, no build)."""
    if not (REPO / ".git").exists():
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*NOT_IN_A_CHECKOUT))
        return
    git = [
        "git",
        "-C",
        str(REPO),
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]
    listed = subprocess.run(git, check=True, capture_output=True, timeout=60).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        # A tracked file deleted from the work tree is not in a checkout either.
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) of every process on the host."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            table[int(entry.name)] = (ppid, argv)
    return table


def daemon_pid(container: str) -> int:
    """The host pid of the `audit-otlp run` process that the command started in `container`."""
    root = int(podman("inspect", container, "--format", "{{.State.Pid}}").stdout)
    table = _processes()
    family, grew = {root}, True
    while grew:
        grown = family | {pid for pid, (ppid, _) in table.items() if ppid in family}
        family, grew = grown, grown != family
    found = [
        pid
        for pid in family
        if any(Path(arg).name == "audit-otlp" and nxt == "run" for arg, nxt in itertools.pairwise(table.get(pid, (0, []))[1][1:]))
    ]
    assert len(found) == 1, f"expected one audit-otlp run process, found {found}"
    return found[0]


def test_readme_has_two_commands_the_first_installs_into_a_venv_and_runs() -> None:
    install_and_run, test_suite = readme_commands()
    assert test_suite == "bash tests/run"
    assert "python3 -m venv" in install_and_run
    assert install_and_run.endswith("audit-otlp run")
    # PEP 668: Debian's and Ubuntu's Python refuse a pip install outside a venv.
    assert "python3 -m pip install" not in install_and_run


def test_readme_first_command_installs_and_follows_state_audit_jsonl_on_clean_bookworm(
    tmp_path: Path,
) -> None:
    require_podman()
    base = ensure_base()
    # The premise: this base is the stock one, where `python3 -m pip install .` cannot work.
    premise = podman(
        *("run", "--rm", *RUN_FLAGS, base, "sh", "-c"),
        "ls /usr/lib/python3*/EXTERNALLY-MANAGED && ! python3 -m pip --version",
        check=False,
    )
    assert premise.returncode == 0, premise.stdout + premise.stderr

    command = readme_commands()[0]
    checkout = tmp_path / "audit-otlp"
    copy_checkout(checkout)
    (checkout / "state").mkdir()
    writer = AuditWriter(checkout / "state" / "audit.jsonl")
    writer.append(3)

    try:
        collector = Collector(port=DEFAULT_PORT)
    except OSError as exc:
        pytest.fail(f"port {DEFAULT_PORT} (the daemon's default endpoint) is taken here: {exc}")
    name = f"audit-otlp-install-{uuid.uuid4().hex[:8]}"
    with collector:
        started = time.monotonic()
        podman(
            *("run", "-d", "--name", name, "--network", "host", *RUN_FLAGS),
            *("-v", f"{checkout}:/src", "-w", "/src", base, "sh", "-c", command),
        )
        try:
            delivered = collector.wait_for(
                lambda c: sorted(set(c.accepted_seqs())) == [1, 2, 3],
                timeout=INSTALL_TIMEOUT,
            )
            assert delivered, podman("logs", name, check=False).stderr[-4000:]
            print(f"\n`{command}`: first rows delivered {time.monotonic() - started:.1f} s after podman run")
            writer.append(2)  # it keeps following the file
            assert collector.wait_for(lambda c: sorted(set(c.accepted_seqs())) == [1, 2, 3, 4, 5], timeout=60)
            assert not collector.invalid

            # Ctrl-C, as the person at the terminal would stop it.
            os.kill(daemon_pid(name), signal.SIGINT)
            exit_code = podman("wait", name, timeout=60).stdout.strip()
            logs = podman("logs", name).stderr
            print("\n".join(logs.strip().splitlines()[-4:]))
            assert exit_code == "0", logs[-4000:]
        finally:
            podman("rm", "-f", "-t", "0", name, check=False)

    checkpoint = json.loads((checkout / "state" / "audit-otlp.checkpoint.json").read_text())
    assert checkpoint["delivered_spans"] == 5
