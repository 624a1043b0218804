"""Disk trouble under the checkpoint: a real filesystem that is full (ENOSPC) or read-only
(EROFS), made with a tiny tmpfs mount, while the daemon runs; and an unwritable checkpoint
directory at start-up.

Root ignores chmod, so permissions would prove nothing here: the faults come from the kernel.
When mounting is impossible (no CAP_SYS_ADMIN) the tests skip and say why.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector
from tests.helpers.daemon import DaemonProcess, daemon_env, write_config
from tests.helpers.wait import wait_until
from tests.torture.harness import read_checkpoint


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    done = _mount("-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(where))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to make real disk faults (needs root/CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield where
    finally:
        _mount("-o", "remount,rw", str(where))
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem says ENOSPC."""
    filler = directory / "filler"
    block = b"\0" * 4096
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            os.write(fd, block)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def break_fs(kind: str, directory: Path) -> Path | None:
    if kind == "enospc":
        return fill(directory)
    done = _mount("-o", "remount,ro", str(directory))
    assert done.returncode == 0, done.stderr
    return None


def repair_fs(kind: str, directory: Path, filler: Path | None) -> None:
    if kind == "enospc":
        assert filler is not None
        filler.unlink()
    else:
        done = _mount("-o", "remount,rw", str(directory))
        assert done.returncode == 0, done.stderr


def ready(daemon: DaemonProcess) -> tuple[int, dict[str, object]]:
    got = daemon.get("/readyz")
    assert got is not None
    return got[0], orjson.loads(got[1])


@pytest.mark.parametrize("kind", ["enospc", "erofs"])
def test_checkpoint_disk_fault_keeps_delivering_and_recovers(audit_cli: str, tmp_path: Path, small_fs: Path, kind: str) -> None:
    source = tmp_path / "audit.jsonl"
    checkpoint = small_fs / "checkpoint.json"
    config = write_config(
        tmp_path / "audit-otlp.toml",
        batch={"max_spans": 50, "max_wait": "50ms"},
        dead_letter={"path": str(tmp_path / "dead-letter.jsonl")},  # only the checkpoint is on the faulty disk
        checkpoint={"interval": "100ms"},
        source={"poll_interval": "100ms"},
    )
    audit = AuditWriter(source)
    audit.append(100)
    with Collector() as collector:
        daemon = DaemonProcess(audit_cli, source, checkpoint, collector.endpoint, tmp_path / "daemon.log", config).start()
        try:
            assert collector.wait_for_spans(100, 30)
            assert wait_until(lambda: (read_checkpoint(checkpoint) or {}).get("offset") == source.stat().st_size, 30)
            filler = break_fs(kind, small_fs)
            before = checkpoint.read_bytes()

            # Rows keep flowing while no checkpoint can be written.
            audit.append(200)
            assert collector.wait_for_spans(300, 30), "delivery stopped while the checkpoint disk was faulty"
            assert wait_until(lambda: daemon.metrics().get("audit_otlp_checkpoint_write_errors_total", 0) > 0, 30), (
                daemon.log_text()[-2000:]
            )
            status, detail = ready(daemon)
            assert status == 503 and detail["checkpoint_writable"] is False, detail
            assert checkpoint.read_bytes() == before, "the previous checkpoint was not kept intact"
            read_checkpoint(checkpoint)
            assert any("checkpoint" in line and "ERROR" in line for line in daemon.log_text().splitlines()), daemon.log_text()[
                -2000:
            ]

            # Space (or writability) returns: the checkpoint catches up, readiness comes back.
            repair_fs(kind, small_fs, filler)
            size = source.stat().st_size
            assert wait_until(lambda: (read_checkpoint(checkpoint) or {}).get("offset") == size, 30), daemon.log_text()[-2000:]
            assert wait_until(lambda: ready(daemon)[0] == 200, 30), ready(daemon)
            assert "checkpoint writes work again" in daemon.log_text()
        finally:
            assert daemon.stop() == 0, daemon.log_text()[-3000:]
        assert sorted(set(collector.accepted_seqs())) == list(range(1, 301))


def _run_once(audit_cli: str, tmp_path: Path, checkpoint: Path) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "audit.jsonl"
    AuditWriter(source).append(3)
    return subprocess.run(
        [
            audit_cli,
            "run",
            "--once",
            "--deadline",
            "20",
            "--file",
            str(source),
            "--checkpoint",
            str(checkpoint),
            "--endpoint",
            "http://127.0.0.1:9/v1/traces",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_env(),
    )


def _assert_exit3_one_line(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    reasons = [line for line in done.stderr.splitlines() if "fatal" in line.lower()]
    assert len(reasons) == 1 and "checkpoint" in reasons[0], done.stderr


def test_readonly_checkpoint_directory_at_startup_exits_3(audit_cli: str, tmp_path: Path, small_fs: Path) -> None:
    assert _mount("-o", "remount,ro", str(small_fs)).returncode == 0
    _assert_exit3_one_line(_run_once(audit_cli, tmp_path, small_fs / "checkpoint.json"))


def test_checkpoint_parent_is_a_file_exits_3(audit_cli: str, tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    _assert_exit3_one_line(_run_once(audit_cli, tmp_path, tmp_path / "not-a-dir" / "checkpoint.json"))


def test_disk_full_while_spooling_loses_nothing_and_says_so(audit_cli: str, tmp_path: Path, small_fs: Path) -> None:
    """The state directory (checkpoint and spool) is a 256 KiB filesystem. With the collector down
    the producer tail-rewrites a 2 MB file: its undelivered rows cannot be spooled (ENOSPC). The
    daemon keeps running, says so (log, metric), keeps its checkpoint, leaves no partial spool,
    and once the collector is back delivers every row from the handle it still holds."""
    from tests.helpers.collector import Mood
    from tests.helpers.rotation import rotate

    source = tmp_path / "audit.jsonl"
    checkpoint = small_fs / "checkpoint.json"
    config = write_config(
        tmp_path / "audit-otlp.toml",
        batch={"max_wait": "50ms"},
        dead_letter={"path": str(tmp_path / "dead-letter.jsonl")},
        retry={"initial_backoff": "50ms", "max_backoff": "200ms"},
        source={"poll_interval": "200ms"},
    )
    audit = AuditWriter(source)
    audit.append(100)
    mood = Mood()
    with Collector(mood) as collector:
        daemon = DaemonProcess(audit_cli, source, checkpoint, collector.endpoint, tmp_path / "daemon.log", config).start()
        try:
            assert collector.wait_for_spans(100, 30)
            mood.mode = "down"
            audit.append(10_000)  # about 2 MB, far more than the state filesystem holds
            rotate(source, "tail_rewrite")
            audit.append(100)
            assert wait_until(lambda: daemon.metrics().get("audit_otlp_spool_errors_total", 0) >= 1, 30), daemon.log_text()[
                -3000:
            ]
            assert "could not be spooled" in daemon.log_text()
            assert daemon.proc is not None and daemon.proc.poll() is None
            assert not any(p.name.endswith(".tmp") for p in (small_fs / "checkpoint.json.spool").glob("*")), (
                "a partial spool was left"
            )
            read_checkpoint(checkpoint)  # still whole
            mood.mode = "up"
            assert wait_until(lambda: set(range(1, 10_201)) <= set(collector.accepted_seqs()), 60), daemon.log_text()[-3000:]
        finally:
            assert daemon.stop() == 0, daemon.log_text()[-3000:]
    assert (read_checkpoint(checkpoint) or {}).get("offset") == source.stat().st_size
