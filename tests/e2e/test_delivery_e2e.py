"""End-to-end delivery proofs: the installed daemon against fault-injecting collectors on
127.0.0.1. Every clean row acknowledged, exactly the poison rows dead-lettered, the metrics
equal to the collector's own counts, nothing claimed while the collector is down, and the
checkpoint never ahead of the lowest unacknowledged row under concurrency."""

from __future__ import annotations

import email.utils
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.helpers.auditgen import AuditWriter, append_bytes
from tests.helpers.collector import Collector, Reply, seq_of
from tests.helpers.daemon import daemon_env, fast_daemon, write_fast_config
from tests.helpers.delivery import first_unsettled_offset, has_marker, read_ndjson, row_offsets, span_count
from tests.helpers.wait import wait_until


class FaultyResponder:
    """Seeded fault mix; remembers what it told the client so the test can reconcile counts."""

    def __init__(self, seed: int, too_large_bytes: int) -> None:
        self.rng = random.Random(seed)
        self.too_large_bytes = too_large_bytes
        self.lock = threading.Lock()
        self.rejected = 0  # spans the collector said it rejected (partial success)
        self.dropped = 0  # connections closed without an answer
        self.faults: Counter[str] = Counter()

    def __call__(self, doc: dict, n: int) -> Reply:
        with self.lock:
            r = self.rng.random()
            spans = span_count(doc)
            if r < 0.10:
                self.faults["503 Retry-After: 0"] += 1
                return Reply(503, b'{"code":14,"message":"unavailable"}', {"Retry-After": "0"})
            if r < 0.16:
                self.faults["429 Retry-After: HTTP-date"] += 1
                return Reply(429, b'{"code":8}', {"Retry-After": email.utils.formatdate(time.time(), usegmt=True)})
            if r < 0.19:
                self.faults["502/504"] += 1
                return Reply(self.rng.choice([502, 504]), b"")
            if r < 0.25:
                self.faults["connection reset"] += 1
                self.dropped += 1
                return Reply(drop_connection=True)
            slow = 0.15 if r < 0.32 else 0.0
            if slow:
                self.faults["slow answer (150 ms)"] += 1
            if len(orjson.dumps(doc)) > self.too_large_bytes:
                self.faults["413 over size"] += 1
                return Reply(413, b'{"message":"request too large"}', delay=slow)
            if has_marker(doc):
                self.faults["400 poison marker"] += 1
                return Reply(400, b'{"code":3,"message":"invalid span POISON"}', delay=slow)
            if r < 0.42:
                k = min(spans, self.rng.randint(0, 2))
                self.rejected += k
                self.faults["200 partial success"] += 1
                return Reply(
                    200,
                    orjson.dumps({"partialSuccess": {"rejectedSpans": str(k), "errorMessage": "dropped by policy"}}),
                    delay=slow,
                )
            if r < 0.50:
                self.faults["202 empty body"] += 1
                return Reply(202, b"", delay=slow)
            return Reply(200, b"{}", delay=slow)


def test_fault_injection_every_clean_row_acknowledged_and_metrics_match(audit_cli: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    writer = AuditWriter(audit)
    rng = random.Random(7)
    total_rows = 900
    poison = set(rng.sample(range(1, total_rows + 1), 6))
    responder = FaultyResponder(seed=11, too_large_bytes=24_000)

    def append(n: int) -> None:
        for _ in range(n):
            nxt = writer.seq + 1
            append_bytes(audit, writer.lines(1, **({"target": f"POISON_{nxt}"} if nxt in poison else {})))

    append(300)
    append_bytes(audit, b"this line is not json\n")  # bad input: becomes an audit.malformed_line span
    config = (
        '[export]\nmax_in_flight = 4\ntimeout = "5s"\n[batch]\nmax_spans = 64\nmax_wait = "30ms"\n'
        f'[delivery]\nreceipts_path = "{tmp_path / "receipts.jsonl"}"\n'
    )
    with Collector(responder) as collector, fast_daemon(audit_cli, tmp_path, collector.endpoint, config) as daemon:
        violations: list[str] = []

        def checkpoint_never_ahead() -> None:
            rows = row_offsets(audit)
            # read the checkpoint first: what is settled only grows, so reading it later is conservative
            cp = daemon.checkpoint_offset()
            dead = {orjson.loads(r["line"])["seq"] for r in read_ndjson(tmp_path / "dead-letter.jsonl")}
            settled = set(collector.accepted_seqs()) | dead
            limit = first_unsettled_offset(rows, settled, audit.stat().st_size)
            if cp > limit:
                violations.append(f"checkpoint {cp} ahead of first unsettled row at {limit}")

        for _ in range(3):
            checkpoint_never_ahead()
            append(200)
            checkpoint_never_ahead()
        remaining = total_rows - writer.seq
        append(remaining)
        size = audit.stat().st_size
        clean = {s for s in range(1, total_rows + 1) if s not in poison}

        def done() -> bool:
            checkpoint_never_ahead()
            return daemon.checkpoint_offset() == size

        assert wait_until(done, timeout=45, interval=0.1), daemon.log_text()[-3000:]
        assert not violations, violations[:3]

        seqs = collector.accepted_seqs()
        assert set(seqs) == clean, f"missing {sorted(clean - set(seqs))[:10]}"  # rows lost: 0
        assert len(seqs) == len(clean), "no request was repeated (no timeouts in this mix)"
        assert not collector.invalid
        dead = read_ndjson(tmp_path / "dead-letter.jsonl")
        assert sorted(orjson.loads(r["line"])["seq"] for r in dead) == sorted(poison)
        assert all(r["status"] == 400 and "POISON" in r["response"] for r in dead)

        m = daemon.metrics()
        accepted_spans = len(collector.accepted_spans())
        assert accepted_spans == len(clean) + 1  # + the malformed line's span
        assert m["audit_otlp_spans_delivered_total"] == accepted_spans - responder.rejected
        assert m["audit_otlp_spans_rejected_total"] == responder.rejected
        assert m["audit_otlp_spans_dead_lettered_total"] == len(poison)
        by_status = Counter(str(r.status) for r in collector.requests)
        for status, count in by_status.items():
            assert m[f'audit_otlp_export_requests_total{{status="{status}"}}'] == count, status
        assert m.get('audit_otlp_export_requests_total{status="error"}', 0) == responder.dropped
        retryable = sum(c for s, c in by_status.items() if s in ("429", "502", "503", "504"))
        assert m["audit_otlp_export_retries_total"] == retryable + responder.dropped
        assert m["audit_otlp_lines_read_total"] == total_rows + 1
        assert sum(v for k, v in m.items() if k.startswith("audit_otlp_malformed_lines_total")) == 1
        assert m["audit_otlp_backlog_bytes"] == 0
        assert m["audit_otlp_last_success_timestamp_seconds"] > time.time() - 120
        receipts = read_ndjson(tmp_path / "receipts.jsonl")
        assert len(receipts) == len(collector.accepted())
        assert sum(r["spans"] for r in receipts) == accepted_spans
        assert daemon.stop() == 0
    print("fault mix:", dict(responder.faults))


def test_nothing_is_claimed_while_the_collector_is_down(audit_cli: str, tmp_path: Path) -> None:
    with Collector() as gone:
        port = gone.port
    audit = tmp_path / "audit.jsonl"
    seqs = AuditWriter(audit).append(50)
    receipts = tmp_path / "receipts.jsonl"
    config = f'[delivery]\nreceipts_path = "{receipts}"\n'
    with fast_daemon(audit_cli, tmp_path, f"http://127.0.0.1:{port}/v1/traces", config) as daemon:
        assert wait_until(lambda: daemon.metrics().get('audit_otlp_export_requests_total{status="error"}', 0) >= 5)
        m = daemon.metrics()
        assert m["audit_otlp_spans_delivered_total"] == 0
        assert m["audit_otlp_last_success_timestamp_seconds"] == 0
        assert m["audit_otlp_backlog_bytes"] == audit.stat().st_size
        assert daemon.checkpoint_offset() == 0 and not receipts.exists()
        status = orjson.loads(
            subprocess.run(
                [
                    audit_cli,
                    "status",
                    "--json",
                    "--config",
                    str(tmp_path / "daemon.toml"),
                    "--file",
                    str(audit),
                    "--checkpoint",
                    str(daemon.checkpoint),
                ],
                env=daemon_env(),
                capture_output=True,
                timeout=30,
            ).stdout
        )
        assert status["delivered_spans"] == 0 and status["last_success"] is None and status["last_receipt"] is None
        with Collector(port=port) as back:  # the collector comes back on the same port
            assert back.wait_for_spans(50, timeout=30)
            assert wait_until(lambda: daemon.checkpoint_offset() == audit.stat().st_size)
            assert sorted(back.accepted_seqs()) == seqs
            assert daemon.metrics()["audit_otlp_spans_delivered_total"] == 50
            assert sum(r["spans"] for r in read_ndjson(receipts)) == 50
            assert daemon.stop() == 0


def test_out_of_order_acks_never_move_the_checkpoint_past_an_unacknowledged_row(audit_cli: str, tmp_path: Path) -> None:
    """The first request is held while later ones are acknowledged; the checkpoint stays at 0,
    no more than the in-flight window settles behind it, and after SIGKILL + restart every row
    is delivered."""
    audit = tmp_path / "audit.jsonl"
    seqs = AuditWriter(audit).append(40)
    release = threading.Event()

    def responder(doc: dict, n: int) -> Reply:
        if 1 in {seq_of(s) for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]}:
            release.wait(30)  # the first batch: answered last (or never)
        return Reply()

    config = '[export]\nmax_in_flight = 4\n[batch]\nmax_spans = 5\nmax_wait = "10ms"\n'
    with Collector(responder) as collector:
        with fast_daemon(audit_cli, tmp_path, collector.endpoint, config) as daemon:
            # The window is max_in_flight (4) batches of 5: three later batches may settle behind
            # the held one, and then reading waits, so a crash can repeat at most the window.
            assert collector.wait_for_spans(15, timeout=30)
            assert wait_until(lambda: daemon.metrics()["audit_otlp_spans_delivered_total"] == 15)
            assert not collector.wait_for_spans(16, timeout=1.0)
            # later batches are acknowledged and settled; the first is not: no progress allowed
            assert daemon.checkpoint_offset() == 0
            assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
            assert daemon.checkpoint_offset() == 0
        release.set()
        assert 1 not in collector.accepted_seqs()
        with fast_daemon(audit_cli, tmp_path, collector.endpoint, config) as daemon:
            assert wait_until(lambda: daemon.checkpoint_offset() == audit.stat().st_size)
            assert set(collector.accepted_seqs()) == set(seqs)  # at least once, nothing lost
            assert daemon.stop() == 0


def test_checkpoint_waits_for_the_dead_letter_record_to_be_on_disk(audit_cli: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    writer = AuditWriter(audit)
    writer.append(9)
    append_bytes(audit, writer.lines(1, target="POISON_10"))
    writer.append(20)
    rows = row_offsets(audit)
    poison_offset = next(o for o, s in rows if s == 10)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the dead-letter directory should be")
    config = f'[dead_letter]\npath = "{blocked / "dead.jsonl"}"\n[batch]\nmax_spans = 5\nmax_wait = "10ms"\n'
    responder = lambda doc, n: Reply(400, b'{"message":"poison"}') if has_marker(doc) else Reply()  # noqa: E731
    with Collector(responder) as collector, fast_daemon(audit_cli, tmp_path, collector.endpoint, config) as daemon:
        # Rows 1-9 are delivered (the poison row's batch is bisected) and the three batches after
        # the stuck one fill the in-flight window; then reading waits for the dead-letter record.
        assert collector.wait_for_spans(9 + 3 * 5, timeout=30)
        assert wait_until(lambda: "cannot write" in daemon.log_text())
        assert daemon.checkpoint_offset() <= poison_offset
        blocked.unlink()
        blocked.mkdir()
        assert wait_until(lambda: daemon.checkpoint_offset() == audit.stat().st_size)
        [record] = read_ndjson(blocked / "dead.jsonl")
        assert record["offset"] == poison_offset and record["status"] == 400
        assert orjson.loads(record["line"])["seq"] == 10
        assert daemon.stop() == 0


def test_receipts_and_status_show_the_last_one(audit_cli: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    AuditWriter(audit).append(30)
    receipts = tmp_path / "receipts.jsonl"
    config = write_fast_config(tmp_path / "r.toml", f'[batch]\nmax_spans = 10\n[delivery]\nreceipts_path = "{receipts}"\n')
    with Collector() as collector:
        args = ["--config", str(config), "--file", str(audit), "--checkpoint", str(tmp_path / "cp.json")]
        result = subprocess.run(
            [audit_cli, "run", "--once", "--deadline", "30", "--endpoint", collector.endpoint, *args],
            env=daemon_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        records = read_ndjson(receipts)
        assert len(records) == len(collector.accepted()) == 3
    ranges = sorted(r["byte_range"] for r in records)  # written in 2xx order, which concurrency may shuffle
    assert ranges[0][0] == 0 and ranges[-1][1] == audit.stat().st_size
    for a, b in zip(ranges, ranges[1:]):
        assert a[1] == b[0]  # together, a contiguous proof of delivery of the whole file
    status = orjson.loads(
        subprocess.run([audit_cli, "status", "--json", *args], env=daemon_env(), capture_output=True, timeout=30).stdout
    )
    assert status["last_receipt"] == records[-1]


@pytest.mark.slow
def test_torture_faults_timeouts_and_sigkill_restarts_lose_nothing(audit_cli: str, tmp_path: Path) -> None:
    """The fault mix above plus answers slower than the client timeout (the collector keeps
    spans the client never heard about: duplicates, never loss) and three SIGKILLs mid-run."""
    audit = tmp_path / "audit.jsonl"
    writer = AuditWriter(audit)
    rng = random.Random(3)
    total_rows = 5000
    poison = set(rng.sample(range(1, total_rows + 1), 20))
    base = FaultyResponder(seed=5, too_large_bytes=24_000)
    timeouts = Counter[str]()

    def responder(doc: dict, n: int) -> Reply:
        if rng.random() < 0.03:
            timeouts["answer after the client gave up"] += 1
            reply = base(doc, n)
            reply.delay = 1.5
            return reply
        return base(doc, n)

    def append(n: int) -> None:
        for _ in range(n):
            nxt = writer.seq + 1
            append_bytes(audit, writer.lines(1, **({"target": f"POISON_{nxt}"} if nxt in poison else {})))

    config = '[export]\nmax_in_flight = 4\ntimeout = "1s"\n[batch]\nmax_spans = 64\nmax_wait = "30ms"\n'
    with Collector(responder) as collector:
        for round_ in range(4):
            append(total_rows // 4)
            daemon = fast_daemon(audit_cli, tmp_path, collector.endpoint, config)
            if round_ < 3:
                target = audit.stat().st_size * (0.5 + 0.1 * round_)
                wait_until(lambda: daemon.checkpoint_offset() >= target, timeout=60)
                daemon.stop(signal.SIGKILL)
            else:
                assert wait_until(lambda: daemon.checkpoint_offset() == audit.stat().st_size, timeout=120), daemon.log_text()[
                    -3000:
                ]
                assert daemon.stop() == 0
        clean = {s for s in range(1, total_rows + 1) if s not in poison}
        seqs = collector.accepted_seqs()
        assert clean <= set(seqs), f"lost {sorted(clean - set(seqs))[:10]}"
        dead = {orjson.loads(r["line"])["seq"] for r in read_ndjson(tmp_path / "dead-letter.jsonl")}
        assert dead == poison
        assert not (set(seqs) & poison)
    print("fault mix:", dict(base.faults) | dict(timeouts), f"duplicates: {len(seqs) - len(set(seqs))}")
