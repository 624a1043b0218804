"""End to end: the installed `audit-otlp run` against a real collector on loopback, while the
audit log is rotated every way the field does it, the collector goes away and the daemon is
SIGKILLed and restarted. What the collector acknowledged must be exactly what was written."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector, Reply
from tests.helpers.daemon import DaemonProcess
from tests.helpers.rotation import STYLES, rotate
from tests.helpers.wait import wait_until

BATCH = 512
IN_FLIGHT = 4


class Switch:
    """The collector's mood: up (200) or down (503)."""

    def __init__(self) -> None:
        self.down = False

    def __call__(self, doc: dict[str, Any], n: int) -> Reply:
        return Reply(503, b'{"message":"down"}') if self.down else Reply()


def rotation_daemon(cli: str, tmp: Path, log: Path, endpoint: str) -> DaemonProcess:
    """The daemon (not yet started) with short retries and polls, without a health port."""
    config = tmp / "audit-otlp.toml"
    config.write_text(
        'retry.initial_backoff = "50ms"\nretry.max_backoff = "300ms"\n'
        'batch.max_wait = "50ms"\ncheckpoint.interval = "100ms"\n'
        f'source.poll_interval = "200ms"\nexport.max_in_flight = {IN_FLIGHT}\nbatch.max_spans = {BATCH}\n'
    )
    return DaemonProcess(cli, log, tmp / "checkpoint.json", endpoint, tmp / "daemon.log", config, health=False)


class Producer(threading.Thread):
    """Appends rows at a high rate and rotates at random moments, in one thread like a producer
    that rotates its own file (so no row is written between a copy and its truncate)."""

    def __init__(self, log: Path, styles: tuple[str, ...], seed: int, rotate_every: tuple[int, int]) -> None:
        super().__init__(daemon=True)
        self.writer = AuditWriter(log)
        self.log = log
        self.styles = styles
        self.rnd = random.Random(seed)
        self.rotate_every = rotate_every
        self.stop_flag = threading.Event()
        self.rotations: Counter[str] = Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            until_rotation = self.rnd.randint(*self.rotate_every)
            while not self.stop_flag.is_set():
                n = self.rnd.randint(1, 20)
                self.writer.append(n)
                until_rotation -= n
                if until_rotation <= 0 and self.styles:
                    style = self.rnd.choice(self.styles)
                    if style == "tail_rewrite" and _line_count(self.log) > 1000:
                        # The producer keeps its last 1000 lines: with the daemon killed and far
                        # behind, the rows before those are gone for good (a documented limit).
                        style = "rename"
                    rotate(self.log, style)
                    self.rotations[style] += 1
                    until_rotation = self.rnd.randint(*self.rotate_every)
                time.sleep(self.rnd.uniform(0.001, 0.004))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


# Polled every 0.2 s, not through Collector.wait_for: its predicate runs under the collector's
# (non-reentrant) lock, which accepted_seqs() takes too.
POLL = 0.2


def _line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def torture(
    audit_cli: str, tmp_path: Path, seed: int, seconds: float, styles: tuple[str, ...], crashes: bool, outages: bool
) -> dict[str, Any]:
    log = tmp_path / "audit.jsonl"
    switch = Switch()
    rnd = random.Random(seed)
    with Collector(switch) as collector:
        daemon = rotation_daemon(audit_cli, tmp_path, log, collector.endpoint)
        producer = Producer(log, styles, seed, (150, 900))
        producer.writer.append(5)
        daemon.start()
        # Without a checkpoint the daemon starts at the current file: let it take hold first.
        assert wait_until(lambda: len(collector.accepted_seqs()) >= 5, timeout=30, interval=POLL), daemon.log_text()
        producer.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(rnd.uniform(0.3, 1.2))
            action = rnd.choice(["kill", "outage", "none"])
            if action == "kill" and crashes:
                daemon.kill()
                time.sleep(rnd.uniform(0.0, 0.6))  # rotations happen while it is stopped
                daemon.start()
            elif action == "outage" and outages:
                switch.down = True
                time.sleep(rnd.uniform(0.3, 1.5))
                if crashes and rnd.random() < 0.5:  # killed while the collector is away
                    daemon.kill()
                    time.sleep(rnd.uniform(0.0, 0.5))
                    daemon.start()
                switch.down = False
        producer.stop_flag.set()
        producer.join(10)
        assert producer.error is None, producer.error
        written = producer.writer.seq
        complete = wait_until(lambda: set(range(1, written + 1)) <= set(collector.accepted_seqs()), timeout=60, interval=POLL)
        exit_code = daemon.stop()
        acked = collector.accepted_seqs()
        # A SIGKILL mid-request leaves the collector a cut-off body: only then is one invalid.
        invalid = list(collector.invalid)
    counts = Counter(acked)
    missing = sorted(set(range(1, written + 1)) - set(counts))
    result = {
        "written": written,
        "acked_unique": len(counts),
        "missing": missing,
        "duplicates": sum(c - 1 for c in counts.values()),
        "kills": daemon.kills,
        "rotations": dict(producer.rotations),
        "exit_code": exit_code,
        "complete": complete,
        "log": daemon.log_text(),
        "invalid": invalid,
    }
    print({k: v for k, v in result.items() if k not in ("log", "missing", "invalid")}, "missing:", len(missing))
    return result


def check(result: dict[str, Any], crashes: bool) -> None:
    assert result["missing"] == [], f"lost {len(result['missing'])} rows, first {result['missing'][:10]}\n{result['log'][-3000:]}"
    assert set(result["rotations"]), "no rotation happened"
    # Duplicates only from crash windows: at most the requests in flight (and queued) at each kill.
    assert result["duplicates"] <= result["kills"] * (2 * IN_FLIGHT + 1) * BATCH
    if not crashes:
        assert result["duplicates"] == 0
        assert result["invalid"] == []
    assert "RESUME GAP" not in result["log"], result["log"][-3000:]
    assert result["exit_code"] == 0


@pytest.mark.timeout(120)
def test_random_rotations_crashes_and_outages_lose_nothing(audit_cli: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("AUDIT_OTLP_TORTURE_SEED", "7"))
    result = torture(audit_cli, tmp_path, seed, 8.0, STYLES, crashes=True, outages=True)
    check(result, crashes=True)


@pytest.mark.timeout(120)
def test_random_rotations_without_crashes_duplicate_nothing(audit_cli: str, tmp_path: Path) -> None:
    result = torture(audit_cli, tmp_path, 11, 4.0, STYLES, crashes=False, outages=True)
    check(result, crashes=False)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", range(100, 110))
def test_torture_long(audit_cli: str, tmp_path: Path, seed: int) -> None:
    result = torture(audit_cli, tmp_path, seed, 60.0, STYLES, crashes=True, outages=True)
    check(result, crashes=True)


# -- the rotation table: style x restart while rotated x collector down ---------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("down", [False, True], ids=["collector_up", "collector_down"])
@pytest.mark.parametrize("restart", [False, True], ids=["live", "while_stopped"])
@pytest.mark.parametrize("style", ["rename", "tail_rewrite", "copytruncate", "delete"])
def test_rotation_table(audit_cli: str, tmp_path: Path, style: str, restart: bool, down: bool) -> None:
    deleted_while_stopped = style == "delete" and restart  # rows nobody held are gone: say so
    log = tmp_path / "audit.jsonl"
    switch = Switch()
    with Collector(switch) as collector:
        daemon = rotation_daemon(audit_cli, tmp_path, log, collector.endpoint)
        writer = AuditWriter(log)
        writer.append(300)
        daemon.start()
        assert wait_until(lambda: len(set(collector.accepted_seqs())) >= 300, timeout=30, interval=POLL), daemon.log_text()
        switch.down = down
        writer.append(200)  # unread or unacknowledged when the rotation comes
        if restart:
            daemon.stop()
        else:
            time.sleep(0.3)  # let the daemon read them (held back by the collector when down)
        rotate(log, style, keep_lines=1000)
        writer.append(100)
        if restart:
            daemon.start()
        switch.down = False
        expected = set(range(1, 301)) | set(range(501, 601)) if deleted_while_stopped else set(range(1, 601))
        assert wait_until(lambda: set(collector.accepted_seqs()) >= expected, timeout=30, interval=POLL), daemon.log_text()
        assert daemon.stop() == 0
        counts = Counter(collector.accepted_seqs())
    assert max(counts.values()) == 1, "a graceful stop and restart must not repeat rows"
    if deleted_while_stopped:
        assert "RESUME GAP" in daemon.log_text()
    else:
        assert set(counts) == expected
        assert "RESUME GAP" not in daemon.log_text()


@pytest.mark.timeout(60)
def test_symlink_switch_e2e(audit_cli: str, tmp_path: Path) -> None:
    first, second, link = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "audit.jsonl"
    writer = AuditWriter(first)
    writer.append(50)
    link.symlink_to(first)
    with Collector() as collector:
        daemon = rotation_daemon(audit_cli, tmp_path, link, collector.endpoint)
        daemon.start()
        assert wait_until(lambda: len(set(collector.accepted_seqs())) >= 50, timeout=30, interval=POLL), daemon.log_text()
        writer.append(20)
        writer.path = second
        writer.append(30)
        tmp = tmp_path / "switch"
        tmp.symlink_to(second)
        os.replace(tmp, link)
        assert wait_until(lambda: set(collector.accepted_seqs()) >= set(range(1, 101)), timeout=30, interval=POLL), (
            daemon.log_text()
        )
        assert daemon.stop() == 0
        counts = Counter(collector.accepted_seqs())
    assert set(counts) == set(range(1, 101)) and max(counts.values()) == 1
