"""The durable-resume scenario engine (tests/e2e/test_durable_resume.py, tests/benchmarks/bench_kill_repeats.py): a producer that writes
and rotates the audit log, the installed daemon started, stopped and SIGKILLed, a collector whose
mood the scenario sets, and the bookkeeping that says which rows must arrive.

The rule it checks: no row is lost that was on disk at a moment the daemon could see it. Rows
that vanished from disk while the daemon was stopped (and that its checkpoint had not passed)
are a real gap: those may be missing, and the gap must then be reported exactly once (log
line, metric, `status`, and `audit.chain.verdict = gap` on the first row after it). Every wait
is a condition with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from tests.helpers.auditgen import AuditWriter, append_bytes
from tests.helpers.collector import Collector, Mood
from tests.helpers.daemon import DaemonProcess, daemon_env, run_cli, write_config
from tests.helpers.rotation import rotate
from tests.helpers.verdict import Outcome, judge
from tests.helpers.wait import wait_until
from tests.torture.harness import quiet, wait_delivered_or_quiet

MAX_SPANS = 512
MAX_IN_FLIGHT = 4
_SEQ = re.compile(rb'"seq":(\d+)')


class Producer:
    """Appends chained rows (each with a unique `seq`) and rotates the file as the field does;
    remembers each line's hash so the checkpoint's last delivered line can be named by seq."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer = AuditWriter(path)
        self.seq_of_line: dict[str, int] = {}
        self.lock = threading.RLock()  # snapshots of the disk see no half-done rotation

    @property
    def written(self) -> int:
        return self.writer.seq

    def append(self, n: int) -> None:
        with self.lock:
            first = self.writer.seq + 1
            data = self.writer.lines(n)
            for i, line in enumerate(data.splitlines()):
                self.seq_of_line[hashlib.sha256(line).hexdigest()] = first + i
            append_bytes(self.path, data)

    def rotate(self, style: str) -> None:
        """`tail_rewrite+rename`: the producer's rewrite, 1000 more rows, then logrotate `create`."""
        with self.lock:
            if style == "tail_rewrite+rename":
                rotate(self.path, "tail_rewrite")
                self.append(1000)
                rotate(self.path, "rename")
            else:
                rotate(self.path, style)

    def on_disk(self) -> set[int]:
        """Rows present in the audit log and its rotated siblings right now."""
        with self.lock:
            seqs: set[int] = set()
            for name in [str(self.path), *glob.glob(f"{self.path}.*")]:
                if name.endswith(".tmp"):
                    continue
                try:
                    data = Path(name).read_bytes()
                except FileNotFoundError:
                    continue
                seqs.update(int(m) for m in _SEQ.findall(data))
            return seqs


@dataclass
class Kill:
    acked_before: set[int]  # rows acknowledged before the SIGKILL
    request_index: int  # collector requests received before it
    lag: int  # rows written but not acknowledged at the kill


class Scenario:
    """One scenario's world. Use as a context manager (it owns the collector)."""

    def __init__(
        self,
        cli: str,
        tmp: Path,
        name: str,
        slow: float | tuple[float, float] = 0.3,
        seed: int = 0,
        poll_interval: str = "200ms",
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.cli, self.tmp, self.name = cli, tmp, name
        self.producer = Producer(tmp / "audit.jsonl")
        self.mood = Mood(slow=slow, seed=seed)
        self.collector = quiet(Collector(self.mood))
        self.checkpoint = tmp / "state" / "checkpoint.json"
        self.log = tmp / "daemon.log"
        self.config = write_config(
            tmp / "audit-otlp.toml",
            batch={"max_spans": MAX_SPANS, "max_wait": "50ms"},
            export={"max_in_flight": max_in_flight},
            retry={"initial_backoff": "50ms", "max_backoff": "300ms"},
            source={"poll_interval": poll_interval},
        )
        # What one SIGKILL may repeat: the requests in flight, plus what was acknowledged while the
        # checkpoint write then in progress was on its way to disk (the window bounds both).
        self.repeat_bound = 2 * max_in_flight * MAX_SPANS
        self.daemon: DaemonProcess | None = None
        self.gone: set[int] = set()  # rows that vanished while the daemon was stopped
        self.gaps: list[int] = []  # per expected gap: the last vanished row
        self.gaps_at_last_start = 0
        self.kills: list[Kill] = []
        self.violations: list[str] = []
        self.lag_at_rotation: int | None = None
        self._seen_at_stop: set[int] | None = None  # rows on disk when the daemon last stopped
        self._written_at_stop = 0
        self._started = time.monotonic()

    def __enter__(self) -> Self:
        self.collector.__enter__()
        self.log.touch()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.daemon is not None and self.daemon.proc is not None and self.daemon.proc.poll() is None:
            self.daemon.kill()
        self.collector.__exit__(*exc)

    # -- the daemon ----------------------------------------------------------------------------

    def _cli_args(self) -> list[str]:
        return [
            "--file",
            str(self.producer.path),
            "--checkpoint",
            str(self.checkpoint),
            "--config",
            str(self.config),
        ]

    def status(self) -> dict[str, Any]:
        done = run_cli(self.cli, ["status", "--json", *self._cli_args()], env=daemon_env())
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def committed(self) -> int:
        """The last row the checkpoint says was delivered (0: none)."""
        checkpoint = self.status().get("checkpoint") or {}
        return self.producer.seq_of_line.get(str(checkpoint.get("last_line_sha256")), 0)

    def _expect_resume(self) -> None:
        """Before a (re)start: which rows vanished while the daemon was stopped? They are a gap."""
        self.gaps_at_last_start = 0
        if self._seen_at_stop is None:
            return
        committed = self.committed()
        with self.producer.lock:
            now = self.producer.on_disk()
            stopped_rows = self._seen_at_stop | set(range(self._written_at_stop + 1, self.producer.written + 1))
        vanished = {s for s in stopped_rows if s not in now and s > committed}
        if vanished:
            self.gone |= vanished
            self.gaps.append(max(vanished))
            self.gaps_at_last_start = 1
        self._seen_at_stop = None

    def start(self) -> None:
        self._expect_resume()
        self.daemon = DaemonProcess(
            self.cli,
            self.producer.path,
            self.checkpoint,
            self.collector.endpoint,
            self.log,
            self.config,
            env=daemon_env(),
        ).start()

    def run_once(self, timeout: float = 120) -> None:
        """`run --once` to completion (the collector must let it finish)."""
        self._expect_resume()
        done = run_cli(
            self.cli,
            ["run", "--once", "--endpoint", self.collector.endpoint, *self._cli_args()],
            env=daemon_env(),
            timeout=timeout,
        )
        with open(self.log, "a") as out:
            out.write(done.stderr)
        if done.returncode != 0:
            self.violations.append(f"run --once exited {done.returncode}")
        self._stopped()

    def _stopped(self) -> None:
        with self.producer.lock:
            self._seen_at_stop = self.producer.on_disk()
            self._written_at_stop = self.producer.written

    def stop(self) -> None:
        assert self.daemon is not None
        code = self.daemon.stop()
        if code != 0:
            self.violations.append(f"SIGTERM: exit code {code}")
        self._stopped()

    def kill(self) -> None:
        assert self.daemon is not None
        with self.producer.lock:
            self.daemon.kill()
            # A request sent just before the kill may still be answered: let the collector finish
            # it, so what it acknowledged is settled before the world changes (mood, files).
            wait_until(lambda: self.collector.handling == 0, 10)
            acked = set(self.collector.accepted_seqs())
            self.kills.append(
                Kill(
                    acked,
                    len(self.collector.requests),
                    self.producer.written - len(acked),
                )
            )
            self._stopped()

    def metric(self, name: str) -> float:
        """A metric of the running daemon, its labelled samples summed."""
        assert self.daemon is not None
        return sum(v for k, v in self.daemon.metrics().items() if k == name or k.startswith(name + "{"))

    # -- conditions ----------------------------------------------------------------------------

    def lag(self) -> int:
        return self.producer.written - len(set(self.collector.accepted_seqs()))

    def expected(self) -> set[int]:
        return set(range(1, self.producer.written + 1)) - self.gone

    def wait_delivered(self, timeout: float = 60) -> bool:
        return wait_until(lambda: self.expected() <= set(self.collector.accepted_seqs()), timeout, 0.1)

    def wait_rotation_noticed(self, before: float, timeout: float = 10) -> bool:
        return wait_until(lambda: self.metric("audit_otlp_rotations_total") > before, timeout, 0.05)

    def wait_read(self, timeout: float = 10) -> bool:
        return wait_until(lambda: self.metric("audit_otlp_lines_read_total") > 0, timeout, 0.05)

    # -- the verdict ---------------------------------------------------------------------------

    def finish(self, timeout: float = 90) -> Outcome:
        """Let the collector up, wait for every row that must arrive, stop, and judge."""
        if self.mood.mode == "down":
            self.mood.mode = "up"
        if self.daemon is not None and self.daemon.proc is not None and self.daemon.proc.poll() is None:
            delivered_all = wait_delivered_or_quiet(self.collector, self.daemon, self.expected(), timeout)
        else:
            delivered_all = self.expected() <= set(self.collector.accepted_seqs())
        out = Outcome(self.name, lag_at_rotation=self.lag_at_rotation, violations=self.violations)
        if self.daemon is not None and self.daemon.proc is not None and self.daemon.proc.poll() is None:
            gaps_metric = self.metric("audit_otlp_resume_gaps_total")
            if gaps_metric != self.gaps_at_last_start:
                self.violations.append(
                    f"audit_otlp_resume_gaps_total is {gaps_metric:g}, expected {self.gaps_at_last_start} for the last start"
                )
            self.stop()
        elif self.daemon is not None and self.daemon.proc is not None and self.daemon.proc.returncode not in (0, -9):
            self.violations.append(f"the daemon died with exit code {self.daemon.proc.returncode}")
        judge(self, out, delivered_all)
        out.seconds = round(time.monotonic() - self._started, 1)
        print("SCENARIO", out.summary())
        report = os.environ.get("DURABLE_REPORT")
        if report:
            with open(report, "a") as fh:
                fh.write(out.summary() + "\n")
        return out
