"""Shared machinery of the torture suite: the daemon as a subprocess, a chaos collector, the
three rotation styles, and invariant checks on what the collector acknowledged.

Nothing here sleeps to synchronise: every wait is a condition polled against a deadline.
"""

from __future__ import annotations

import collections
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson

from collector import Collector, Reply
from processes import free_port, wait_until




def fault_pause(seconds: float) -> None:
    """Let a random amount of time pass before injecting a fault (the timing *is* the fault;
    this never stands in for waiting on a condition)."""
    threading.Event().wait(seconds)




# ---------------------------------------------------------------------------------------------
# The daemon under test.


def write_config(path: Path, **sections: dict[str, Any]) -> Path:
    """A TOML file from {section: {key: value}} (values: str, int, float, bool)."""
    out: list[str] = []
    for section, keys in sections.items():
        out.append(f"[{section}]")
        for key, value in keys.items():
            if isinstance(value, bool):
                out.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, (int, float)):
                out.append(f"{key} = {value}")
            else:
                out.append(f"{key} = {orjson.dumps(str(value)).decode()}")
    path.write_text("\n".join(out) + "\n")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything that would configure the daemon."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "AUDIT_OTLP_", "SENTRY_", "DD_")) and k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET")}
    env.update(extra)
    return env


@dataclass
class DaemonProcess:
    """`audit-otlp run` as a subprocess, logging to a file, with /metrics on a free port."""

    cli: str
    source: Path
    checkpoint: Path
    endpoint: str
    log_path: Path
    config: Path | None = None
    env: dict[str, str] = field(default_factory=clean_env)
    extra_args: list[str] = field(default_factory=list)
    health: bool = True
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def argv(self) -> list[str]:
        argv = [self.cli, "run", "--file", str(self.source), "--checkpoint", str(self.checkpoint),
                "--endpoint", self.endpoint, *self.extra_args]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        if self.health:
            self.port = free_port()
            argv += ["--health-listen", f"127.0.0.1:{self.port}"]
        return argv

    def start(self) -> "DaemonProcess":
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it from here
        try:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=self.env)
        finally:
            log.close()
        if self.health:
            ok = wait_until(lambda: self.get("/healthz") is not None or self.proc.poll() is not None, 30)  # type: ignore[union-attr]
            assert ok and self.proc.poll() is None, f"daemon did not come up:\n{self.log_text()[-3000:]}"
        return self

    def get(self, path: str) -> tuple[int, bytes] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:  # noqa: S310
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return None

    def metrics(self) -> dict[str, float]:
        got = self.get("/metrics")
        assert got is not None and got[0] == 200, "no /metrics"
        return parse_metrics(got[1].decode())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"daemon ignored SIGTERM for {timeout} s:\n{self.log_text()[-3000:]}") from None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name or name{labels}: value}; unlabelled totals summed under the name."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        out[name + labels] = value
        if labels:
            out[name] = out.get(name, 0.0) + value
    return out


# ---------------------------------------------------------------------------------------------
# The chaos collector.

FAULT_KINDS = ("ok", "slow", "503", "429", "timeout", "reset", "partial")


class ChaosResponder:
    """Answers each request with a random fault (weights per kind), counting what it did.

    Only answers that reach the client are recorded by `Collector` as acknowledged, so a
    timeout answers 503 after the client has given up (never an ambiguous late 200).
    """

    def __init__(self, seed: int, weights: dict[str, float], export_timeout: float, retry_after: str = "0") -> None:
        self.rng = random.Random(seed)
        self.kinds = list(weights)
        self.weights = [weights[k] for k in self.kinds]
        self.export_timeout = export_timeout
        self.retry_after = retry_after
        self.counts: collections.Counter[str] = collections.Counter()
        self.rejected = 0  # spans reported rejected through partialSuccess
        self.enabled = True
        self.in_request = threading.Event()  # set while a request is being held (slow/timeout)
        self._lock = threading.Lock()

    def __call__(self, doc: dict[str, Any], n: int) -> Reply:
        with self._lock:
            kind = self.rng.choices(self.kinds, self.weights)[0] if self.enabled else "ok"
            self.counts[kind] += 1
            spans = sum(len(ss["spans"]) for rs in doc["resourceSpans"] for ss in rs["scopeSpans"])
            if kind == "ok":
                return Reply(200)
            if kind == "slow":
                self.in_request.set()
                return Reply(200, delay=self.rng.uniform(0.02, self.export_timeout / 10))
            if kind == "503":
                return Reply(503, b'{"message":"overloaded"}')
            if kind == "429":
                return Reply(429, b'{"message":"slow down"}', headers={"Retry-After": self.retry_after})
            if kind == "timeout":
                self.in_request.set()
                return Reply(503, delay=self.export_timeout * 1.3)
            if kind == "reset":
                return Reply(drop_connection=True)
            if kind == "partial":
                k = self.rng.randint(1, max(spans, 1)) if spans else 0
                self.rejected += k
                body = orjson.dumps({"partialSuccess": {"rejectedSpans": k, "errorMessage": "chaos: rejected"}})
                return Reply(200, body)
            raise AssertionError(kind)


def quiet(collector: Collector) -> Collector:
    """Silence the server's tracebacks for connections the test broke on purpose (kills, resets)."""
    collector.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    return collector


def acknowledged_seqs(collector: Collector) -> collections.Counter[int]:
    """How many times each row (by `seq`) reached the collector in a request answered 2xx."""
    return collections.Counter(collector.accepted_seqs())


def missing_rows(collector: Collector, expected: set[int]) -> set[int]:
    return expected - set(collector.accepted_seqs())


def duplicates(counts: collections.Counter[int]) -> int:
    """Extra deliveries beyond the first, summed over rows."""
    return sum(c - 1 for c in counts.values() if c > 1)


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint as JSON; None when there is none yet. A torn or non-JSON file raises."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    doc = orjson.loads(data)
    assert isinstance(doc, dict) and "offset" in doc and "version" in doc, f"checkpoint lacks fields: {data[:200]!r}"
    return doc


# ---------------------------------------------------------------------------------------------
# Rotation styles (as operators and the producer do them).


def rotate_rename_create(path: Path, generation: int) -> None:
    """logrotate `create`: rename the file away, start a new empty one."""
    os.rename(path, path.with_name(f"{path.name}.{generation}"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)


def rotate_copytruncate(path: Path, generation: int) -> None:
    """logrotate `copytruncate`: copy the content aside, truncate the original in place."""
    shutil.copyfile(path, path.with_name(f"{path.name}.{generation}"))
    os.truncate(path, 0)


def rotate_tail_rewrite(path: Path, generation: int, keep: int = 1000) -> None:
    """The producer: `tail -n 1000 f > f.tmp && mv f.tmp f` (the new file repeats old rows)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        subprocess.run(["tail", "-n", str(keep), str(path)], stdout=out, check=True)
    os.rename(tmp, path)


ROTATIONS: dict[str, Callable[[Path, int], None]] = {
    "rename_create": rotate_rename_create,
    "copytruncate": rotate_copytruncate,
    "tail_rewrite": rotate_tail_rewrite,
}


def wait_delivered_or_quiet(collector: Collector, daemon: DaemonProcess, expected: set[int], timeout: float,
                            quiet_for: float = 2.0) -> bool:
    """Wait until every expected row was acknowledged (True), or the daemon has settled down with
    nothing left to send for `quiet_for` seconds (False: what is missing now is lost)."""
    last: list[Any] = [None, time.monotonic()]

    def done() -> bool:
        if expected <= set(collector.accepted_seqs()):
            return True
        m = daemon.metrics()
        idle = m.get("audit_otlp_backlog_bytes", 1) == 0 and m.get("audit_otlp_requests_in_flight", 1) == 0
        key = (len(collector.requests), m.get("audit_otlp_lines_read_total"))
        if key != last[0] or not idle:
            last[:] = [key, time.monotonic()]
            return False
        return time.monotonic() - last[1] >= quiet_for

    wait_until(done, timeout, 0.1)
    return expected <= set(collector.accepted_seqs())
