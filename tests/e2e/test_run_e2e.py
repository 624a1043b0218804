"""End to end: the installed `audit-otlp run` against a real collector on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from tests.helpers.auditgen import AuditWriter, append_bytes
from tests.helpers.collector import Collector, Reply, attrs, seq_of
from tests.helpers.daemon import Workdir, daemon_env, load_checkpoint, run_cli
from tests.helpers.wait import wait_until


@pytest.fixture
def work(tmp_path: Path) -> Workdir:
    return Workdir(tmp_path)


def test_n_rows_become_exactly_n_spans_with_specified_ids_times_and_attributes(work: Workdir, audit_cli: str) -> None:
    writer = AuditWriter(work.audit)
    writer.append(1200)
    with Collector() as collector:
        result = run_cli(audit_cli, work.args(collector.endpoint, "--once"))
        assert result.returncode == 0, result.stderr
        spans = collector.accepted_spans()
    assert collector.invalid == []
    assert sorted(seq_of(s) for s in spans) == list(range(1, 1201))
    for request in collector.accepted():
        assert len(request.doc["resourceSpans"]) == 1 and len(request.doc["resourceSpans"][0]["scopeSpans"]) == 1
        assert request.headers["content-type"] == "application/json"
        resource = {kv["key"]: kv["value"]["stringValue"] for kv in request.doc["resourceSpans"][0]["resource"]["attributes"]}
        assert resource["service.name"] == "hydra.audit-trail" and resource["service.namespace"] == "enchanter"
        # One span per row, in file order within each request.
        seqs = [seq_of(s) for s in request.spans]
        assert seqs == sorted(seqs)
    by_seq = {seq_of(s): s for s in spans}
    first = by_seq[1]
    assert len(first["traceId"]) == 32 and len(first["spanId"]) == 16
    assert first["traceId"] == first["traceId"].lower() and int(first["traceId"], 16) and int(first["spanId"], 16)
    assert len({s["spanId"] for s in spans}) == 1200
    a = attrs(first)
    assert a["audit.prev_hash"] == "GENESIS" and a["audit.event"] == "tool_use"
    assert a["tool.name"] == "Read" and a["agent.id"] == "s-1" and a["tool.duration_ms"] == 1
    assert a["audit.chain.verified"] is True
    # seq 1 is stamped 2026-04-15T14:00:01.001Z by auditgen.
    expected = datetime(2026, 4, 15, 14, 0, 1, tzinfo=UTC)
    assert first["startTimeUnixNano"] == str(int(expected.timestamp()) * 10**9 + 1_000_000)
    assert int(first["endTimeUnixNano"]) - int(first["startTimeUnixNano"]) == 1_000_000
    assert all(attrs(s)["audit.chain.verified"] is True for s in spans)
    assert load_checkpoint(work.checkpoint)["offset"] == work.audit.stat().st_size


def test_timestamps_are_utc_whatever_the_machine_time_zone(work: Workdir, audit_cli: str) -> None:
    AuditWriter(work.audit).append(5)
    starts = []
    for tz in ("UTC", "America/New_York"):
        with Collector():
            env = daemon_env(TZ=tz)
            result = run_cli(audit_cli, ["run", "--once", "--dry-run", "--file", str(work.audit)], env=env)
            assert result.returncode == 0, result.stderr
            docs = [orjson.loads(line) for line in result.stdout.splitlines()]
            starts.append(
                [
                    s["startTimeUnixNano"]
                    for d in docs
                    for rs in d["resourceSpans"]
                    for ss in rs["scopeSpans"]
                    for s in ss["spans"]
                ]
            )
    assert starts[0] == starts[1] and len(starts[0]) == 5


def test_collector_down_claims_nothing_then_everything_arrives(work: Workdir, audit_cli: str) -> None:
    AuditWriter(work.audit).append(300)
    healthy = threading.Event()
    refused = []

    def responder(doc: dict, n: int) -> Reply:
        if not healthy.is_set():
            refused.append(n)
            return Reply(503, b'{"message":"down"}')
        return Reply()

    with Collector(responder) as collector:
        env = daemon_env()
        daemon = work.daemon(audit_cli, collector.endpoint, env=env)
        try:
            assert wait_until(lambda: len(refused) >= 3), "the daemon should keep retrying"
            # Nothing was acknowledged, so nothing may be claimed: the checkpoint stays at 0.
            doc = work.checkpoint_doc()
            assert doc is None or doc["offset"] == 0
            assert collector.accepted_spans() == []
            healthy.set()
            assert collector.wait_for_spans(300, timeout=30)
            assert wait_until(lambda: (work.checkpoint_doc() or {}).get("offset") == work.audit.stat().st_size)
        finally:
            code, err = daemon.stop(), daemon.log_text()
    assert code == 0, err
    assert sorted(collector.accepted_seqs()) == list(range(1, 301))


def test_sigkill_during_delivery_loses_nothing_and_repeats_only_in_flight(work: Workdir, audit_cli: str) -> None:
    writer = AuditWriter(work.audit)
    writer.append(20_000)
    slow = threading.Event()
    slow.set()

    def responder(doc: dict, n: int) -> Reply:
        return Reply(delay=0.05 if slow.is_set() else 0.0)

    with Collector(responder) as collector:
        daemon = work.daemon(audit_cli, collector.endpoint, "--health-listen", "127.0.0.1:0")
        assert collector.wait_for_spans(3000, timeout=30)
        daemon.kill()
        acknowledged_before = list(collector.accepted_seqs())
        checkpoint = work.checkpoint_doc()
        assert checkpoint is not None, "a checkpoint should have been written during delivery"
        slow.clear()
        result = run_cli(audit_cli, work.args(collector.endpoint, "--once"))
        assert result.returncode == 0, result.stderr
        seqs = collector.accepted_seqs()
    assert set(seqs) == set(range(1, 20_001)), "every row must be acknowledged"
    duplicates = sum(c - 1 for c in Counter(seqs).values())
    # A crash repeats at most the requests in flight: max_in_flight (4) x max_spans (512),
    # plus the queue of batches waiting for a worker (4 x 512).
    assert duplicates <= 2 * 4 * 512
    # Duplicates are recognisably the same spans: identical ids.
    ids = {}
    for span in collector.accepted_spans():
        key = seq_of(span)
        assert ids.setdefault(key, (span["traceId"], span["spanId"])) == (span["traceId"], span["spanId"])
    # Every duplicate was acknowledged before the crash but lies after the checkpoint.
    assert len(acknowledged_before) >= duplicates


def test_partial_last_line_is_held_until_its_newline_arrives(work: Workdir, audit_cli: str) -> None:
    writer = AuditWriter(work.audit)
    writer.append(3)
    line = writer.lines(1)
    append_bytes(work.audit, line[:40])
    with Collector() as collector:
        daemon = work.daemon(audit_cli, collector.endpoint)
        try:
            assert collector.wait_for_spans(3)
            assert not collector.wait_for_spans(4, timeout=1.0), "a partial line must not be shipped"
            append_bytes(work.audit, line[40:])
            assert collector.wait_for_spans(4)
        finally:
            code, err = daemon.stop(), daemon.log_text()
    assert code == 0, err
    assert sorted(collector.accepted_seqs()) == [1, 2, 3, 4]


def test_bad_lines_become_accounted_error_spans_and_nothing_is_lost(work: Workdir, audit_cli: str) -> None:
    writer = AuditWriter(work.audit)
    writer.append(2)
    append_bytes(work.audit, b'this is not json\n\n   \n[1,2,3]\n\xff\xfe{"bad": "utf8"}\n')
    append_bytes(work.audit, b'{"event":"tool_use","big":"' + b"x" * (2 * 1024 * 1024) + b'"}\n')
    writer.append(2)
    with Collector() as collector:
        result = run_cli(audit_cli, work.args(collector.endpoint, "--once"))
        assert result.returncode == 0, result.stderr
        spans = collector.accepted_spans()
    malformed = [attrs(s) for s in spans if s["name"] == "audit.malformed_line"]
    assert sorted(m["error.type"] for m in malformed) == ["invalid_json", "invalid_utf8", "line_too_long", "not_an_object"]
    for m in malformed:
        assert {"audit.offset", "audit.length", "audit.line_sha256"} <= m.keys()
    assert all(s["status"]["code"] == 2 for s in spans if s["name"] == "audit.malformed_line")
    too_long = next(m for m in malformed if m["error.type"] == "line_too_long")
    assert too_long["audit.length"] > 2 * 1024 * 1024
    assert "xxxxxxxx" not in json.dumps(spans)  # the content of a bad line is never shipped
    assert sorted(filter(None, (seq_of(s) for s in spans))) == [1, 2, 3, 4]


def test_once_deadline_exits_1_when_the_collector_never_answers_2xx(work: Workdir, audit_cli: str) -> None:
    AuditWriter(work.audit).append(10)
    with Collector(lambda doc, n: Reply(503)) as collector:
        result = run_cli(audit_cli, work.args(collector.endpoint, "--once", "--deadline", "2"))
    assert result.returncode == 1, result.stderr
    assert "deadline" in result.stderr
    doc = work.checkpoint_doc()
    assert doc is None or doc["offset"] == 0


def test_once_with_a_missing_file_exits_0_and_delivers_nothing(work: Workdir, audit_cli: str) -> None:
    with Collector() as collector:
        result = run_cli(audit_cli, work.args(collector.endpoint, "--once"))
    assert result.returncode == 0, result.stderr
    assert collector.requests == []


def test_export_prints_requests_each_accepted_on_its_own(work: Workdir, audit_cli: str) -> None:
    AuditWriter(work.audit).append(1500)
    result = run_cli(audit_cli, ["export", str(work.audit)])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) >= 3  # 1500 rows in requests of at most 512 spans
    import httpx

    with Collector() as collector:
        for line in lines:
            assert httpx.post(collector.endpoint, content=line, headers={"Content-Type": "application/json"}).status_code == 200
        assert collector.invalid == []
        assert sorted(collector.accepted_seqs()) == list(range(1, 1501))


def test_dry_run_prints_requests_and_writes_no_checkpoint(work: Workdir, audit_cli: str) -> None:
    AuditWriter(work.audit).append(7)
    result = run_cli(
        audit_cli,
        [
            "run",
            "--once",
            "--dry-run",
            "--file",
            str(work.audit),
            "--checkpoint",
            str(work.checkpoint),
            "--endpoint",
            "http://127.0.0.1:9/v1/traces",
        ],
    )
    assert result.returncode == 0, result.stderr
    docs = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert sum(len(ss["spans"]) for d in docs for rs in d["resourceSpans"] for ss in rs["scopeSpans"]) == 7
    assert not work.checkpoint.exists()


def test_sigterm_writes_the_checkpoint_and_exits_0(work: Workdir, audit_cli: str) -> None:
    AuditWriter(work.audit).append(50)
    with Collector() as collector:
        daemon = work.daemon(audit_cli, collector.endpoint)
        assert collector.wait_for_spans(50)
        code, err = daemon.stop(signal.SIGTERM), daemon.log_text()
    assert code == 0, err
    assert work.checkpoint_doc()["offset"] == work.audit.stat().st_size


def test_restart_resumes_after_the_last_delivered_row(work: Workdir, audit_cli: str) -> None:
    writer = AuditWriter(work.audit)
    writer.append(100)
    with Collector() as collector:
        assert run_cli(audit_cli, work.args(collector.endpoint, "--once")).returncode == 0
        writer.append(100)
        assert run_cli(audit_cli, work.args(collector.endpoint, "--once")).returncode == 0
        seqs = collector.accepted_seqs()
    assert sorted(seqs) == list(range(1, 201)), "no duplicates and no gaps across a clean restart"


def test_unwritable_checkpoint_directory_is_fatal_with_exit_3(work: Workdir, audit_cli: str, tmp_path: Path) -> None:
    AuditWriter(work.audit).append(1)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the checkpoint directory should be")
    result = run_cli(
        audit_cli,
        [
            "run",
            "--once",
            "--file",
            str(work.audit),
            "--checkpoint",
            str(blocker / "cp.json"),
            "--endpoint",
            "http://127.0.0.1:9/v1/traces",
        ],
    )
    assert result.returncode == 3
    assert "fatal" in result.stderr.lower() and len(result.stderr.strip().splitlines()) == 1


def test_a_file_where_the_spool_directory_goes_is_fatal_with_exit_3(work: Workdir, audit_cli: str, tmp_path: Path) -> None:
    AuditWriter(work.audit).append(1)
    checkpoint = tmp_path / "state" / "cp.json"
    checkpoint.parent.mkdir()
    checkpoint.with_name("cp.json.spool").write_text("a file where the spool directory should be")
    args = [
        "run",
        "--once",
        "--file",
        str(work.audit),
        "--checkpoint",
        str(checkpoint),
        "--endpoint",
        "http://127.0.0.1:9/v1/traces",
    ]
    result = run_cli(audit_cli, args)
    assert result.returncode == 3, result.stderr
    assert "cp.json.spool" in result.stderr and "not a directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    status = run_cli(audit_cli, ["status", "--file", str(work.audit), "--checkpoint", str(checkpoint)])
    assert "Traceback" not in status.stderr, status.stderr


def test_waits_for_a_file_that_does_not_exist_yet(work: Workdir, audit_cli: str) -> None:
    with Collector() as collector:
        daemon = work.daemon(audit_cli, collector.endpoint)
        try:
            assert wait_until(lambda: work.checkpoint.parent.exists())
            AuditWriter(work.audit).append(5)
            assert collector.wait_for_spans(5, timeout=10)
        finally:
            code, err = daemon.stop(), daemon.log_text()
    assert code == 0, err


def test_corrupt_checkpoint_restarts_from_the_beginning(work: Workdir, audit_cli: str) -> None:
    AuditWriter(work.audit).append(10)
    work.checkpoint.parent.mkdir(parents=True)
    work.checkpoint.write_text("{torn write")
    with Collector() as collector:
        result = run_cli(audit_cli, work.args(collector.endpoint, "--once"))
    assert result.returncode == 0
    assert "CHECKPOINT CORRUPT" in result.stderr
    assert sorted(collector.accepted_seqs()) == list(range(1, 11))
    assert list(work.checkpoint.parent.glob("checkpoint.json.corrupt-*"))


def test_audit_log_is_opened_read_only(work: Workdir, audit_cli: str) -> None:
    AuditWriter(work.audit).append(3)
    os.chmod(work.audit, 0o444)
    before = work.audit.read_bytes()
    with Collector() as collector:
        assert run_cli(audit_cli, work.args(collector.endpoint, "--once")).returncode == 0
    assert work.audit.read_bytes() == before
