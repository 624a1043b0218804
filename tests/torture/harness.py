"""The torture suite's own machinery: a chaos collector, fault timing and invariant checks on
what the collector acknowledged (the daemon, rotations and waits come from tests.helpers).

Nothing here sleeps to synchronise: every wait is a condition polled against a deadline.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from tests.helpers.collector import Collector, Reply
from tests.helpers.daemon import DaemonProcess, load_checkpoint
from tests.helpers.wait import wait_until


def fault_pause(seconds: float) -> None:
    """Let a random amount of time pass before injecting a fault (the timing *is* the fault;
    this never stands in for waiting on a condition)."""
    threading.Event().wait(seconds)


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
    """The checkpoint (its one source's view, tests.helpers.daemon.checkpoint_view); None when
    there is none yet. A torn or non-JSON file raises."""
    doc = load_checkpoint(path)
    assert doc is None or ("offset" in doc and "version" in doc), f"checkpoint lacks fields: {str(doc)[:200]}"
    return doc


def wait_delivered_or_quiet(
    collector: Collector, daemon: DaemonProcess, expected: set[int], timeout: float, quiet_for: float = 2.0
) -> bool:
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
