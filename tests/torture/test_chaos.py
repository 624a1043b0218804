"""Collector chaos: one daemon run against a collector that answers with a random mixture of
503, 429 + Retry-After, timeouts (an answer later than export.timeout), connection resets, slow
answers and partial success, while a writer appends rows.

Invariants: every row is acknowledged at least once; with no crash nothing is acknowledged
twice (a timed-out or reset request was never acknowledged, a partially rejected one is not
retried); every body is valid OTLP; and the daemon's audit_otlp_spans_delivered_total equals
what the collector acknowledged minus what it reported rejected.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector
from tests.helpers.daemon import DaemonProcess, write_config
from tests.helpers.wait import wait_until
from tests.torture.harness import ChaosResponder, acknowledged_seqs, duplicates, quiet, read_checkpoint

# Generous, so that a slow 200 (at most a tenth of it) is never mistaken for a timeout by a loaded
# machine: a 200 the client gave up on would count as acknowledged here but not in the daemon.
EXPORT_TIMEOUT = 3.0
WEIGHTS = {"ok": 4, "slow": 2, "503": 2, "429": 1, "timeout": 0.5, "reset": 1, "partial": 1}


def run_chaos(cli: str, tmp_path: Path, seconds: float, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    source = tmp_path / "audit.jsonl"
    checkpoint = tmp_path / "state" / "checkpoint.json"
    config = write_config(
        tmp_path / "audit-otlp.toml",
        batch={"max_spans": 50, "max_wait": "50ms"},
        export={"max_in_flight": 4, "timeout": EXPORT_TIMEOUT},
        retry={"initial_backoff": "20ms", "max_backoff": "200ms"},
        source={"poll_interval": "100ms"},
    )
    responder = ChaosResponder(seed, WEIGHTS, EXPORT_TIMEOUT, retry_after="0")
    audit = AuditWriter(source)
    halt = threading.Event()

    def write() -> None:
        while not halt.is_set():
            audit.append(rng.randint(1, 20))
            halt.wait(rng.uniform(0.01, 0.05))  # the producer's pace, not a synchronisation

    with quiet(Collector(responder)) as collector:
        daemon = DaemonProcess(cli, source, checkpoint, collector.endpoint, tmp_path / "daemon.log", config).start()
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            # The chaos phase lasts `seconds`; the checkpoint must be whole JSON whenever we look.
            end = time.monotonic() + seconds
            reads = 0

            def chaos_over() -> bool:
                nonlocal reads
                read_checkpoint(checkpoint)
                reads += 1
                return time.monotonic() >= end

            wait_until(chaos_over, seconds + 5, 0.05)
            halt.set()
            writer.join(10)
            responder.enabled = False
            expected = set(range(1, audit.seq + 1))
            all_acked = collector.wait_for(lambda c: expected <= set(c.accepted_seqs()), timeout=120)

            def counter_matches() -> bool:
                acked = len(collector.accepted_spans())
                return daemon.metrics().get("audit_otlp_spans_delivered_total") == acked - responder.rejected

            counter_ok = wait_until(counter_matches, 30, 0.1)
            metrics = daemon.metrics()
        finally:
            halt.set()
            exit_code = daemon.stop()
        counts = acknowledged_seqs(collector)
        report = {
            "seconds": seconds,
            "rows": len(expected),
            "faults": dict(responder.counts),
            "lost": len(expected - set(counts)),
            "duplicates": duplicates(counts),
            "acked_spans": len(collector.accepted_spans()),
            "rejected_reported": responder.rejected,
            "delivered_metric": metrics.get("audit_otlp_spans_delivered_total"),
            "checkpoint_reads": reads,
            # More client timeouts than "timeout" answers means a 2xx was given up on (see EXPORT_TIMEOUT).
            "daemon_timeouts": daemon.log_text().count("export failed (timeout)"),
        }
        print("CHAOS-REPORT", report)
        assert exit_code == 0, daemon.log_text()[-3000:]
        assert not collector.invalid, collector.invalid[:3]
        assert all_acked, f"{report}: never acknowledged e.g. {sorted(expected - set(counts))[:20]}"
        assert report["duplicates"] == 0, report
        assert counter_ok, report
        # Every kind of fault really happened (otherwise the test proves less than it says).
        assert all(responder.counts[k] > 0 for k in WEIGHTS), report
        return report


def test_collector_chaos(audit_cli: str, tmp_path: Path) -> None:
    run_chaos(audit_cli, tmp_path, seconds=15, seed=3)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_collector_chaos_long(audit_cli: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("TORTURE_SEED", "0")) or int(time.time())
    print(f"seed {seed}")
    run_chaos(audit_cli, tmp_path, seconds=300, seed=seed)
