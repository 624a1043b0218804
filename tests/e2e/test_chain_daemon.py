"""The daemon verifies the chain while streaming: `audit-otlp run --once` against a real
collector; each tampering gives one audit.chain_broken span and audit.chain.verified=false on
the right row, shipping goes on, and a restart from the checkpoint gives no false break."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_otlp.mapping.chain import ChainHasher
from tests.helpers.auditgen import AuditWriter, append_bytes
from tests.helpers.collector import Collector, attrs
from tests.helpers.daemon import load_checkpoint
from tests.helpers.tampering import TAMPERINGS


def run_once(
    cli: str, audit: Path, checkpoint: Path, endpoint: str, env: dict[str, str] | None = None, *extra: str
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_OTLP_", "OTEL_", "SENTRY_", "DD_"))}
    full_env.update(env or {})
    result = subprocess.run(
        [
            cli,
            "run",
            "--once",
            "--deadline",
            "60",
            "--file",
            str(audit),
            "--checkpoint",
            str(checkpoint),
            "--endpoint",
            endpoint,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env=full_env,
    )
    assert result.returncode == 0, result.stderr
    return result


def offsets_of(lines: list[bytes]) -> list[int]:
    out, offset = [], 0
    for line in lines:
        out.append(offset)
        offset += len(line) + 1
    return out


def row_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] != "audit.chain_broken"]


def broken_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == "audit.chain_broken"]


def assert_chain_intact(spans: list[dict[str, Any]]) -> None:
    """No break and every chained row verified (for rotation / restart tests to reuse)."""
    assert not broken_spans(spans), [attrs(s) for s in broken_spans(spans)]
    unverified = [attrs(s) for s in row_spans(spans) if attrs(s).get("audit.chain.verified") is not True]
    assert not unverified, unverified


def test_intact_chain_every_span_verified(tmp_path: Path, audit_cli: str) -> None:
    audit = tmp_path / "audit.jsonl"
    writer = AuditWriter(audit)
    writer.append(40)
    lines = audit.read_bytes().splitlines()
    with Collector() as collector:
        run_once(audit_cli, audit, tmp_path / "cp.json", collector.endpoint)
        spans = collector.accepted_spans()
    assert not collector.invalid
    assert len(spans) == 40 and not broken_spans(spans)
    for span, line in zip(spans, lines, strict=True):
        a = attrs(span)
        assert a["audit.chain.verified"] is True
        assert a["audit.hash"] == ChainHasher().row_hash(orjson.loads(line))
        assert "audit.chain.anchor" not in a
    checkpoint = load_checkpoint(tmp_path / "cp.json")
    assert checkpoint is not None
    assert checkpoint["chain"]["last_hash"] == ChainHasher().row_hash(orjson.loads(lines[-1]))
    assert checkpoint["chain"]["breaks"] == 0 and checkpoint["chain"]["recent"][-1] == checkpoint["chain"]["last_hash"]


@pytest.mark.parametrize("kind", ["edit", "delete", "insert", "reorder"])
def test_tampering_gives_one_break_span_at_the_right_row(tmp_path: Path, audit_cli: str, kind: str) -> None:
    audit = tmp_path / "audit.jsonl"
    lines = AuditWriter(tmp_path / "unused").lines(30).splitlines()
    bad_line = TAMPERINGS[kind](lines)
    audit.write_bytes(b"".join(line + b"\n" for line in lines))
    offsets = offsets_of(lines)

    with Collector() as collector:
        run_once(audit_cli, audit, tmp_path / "cp.json", collector.endpoint)
        spans = collector.accepted_spans()
    assert not collector.invalid
    rows = row_spans(spans)
    assert len(rows) == len(lines)  # shipping went on: every row delivered
    verified = {attrs(s)["audit.offset"]: attrs(s)["audit.chain.verified"] for s in rows}
    verdicts = {attrs(s)["audit.offset"]: attrs(s)["audit.chain.verdict"] for s in rows}
    assert verified[offsets[bad_line - 1]] is False and verdicts[offsets[bad_line - 1]] == "break"
    breaks = broken_spans(spans)
    assert len(breaks) == 1
    evidence = attrs(breaks[0])
    assert evidence["audit.line_number"] == bad_line and evidence["audit.offset"] == offsets[bad_line - 1]
    assert evidence["audit.chain.found"] == orjson.loads(lines[bad_line - 1])["prev_hash"]
    assert evidence["audit.chain.expected"] == ChainHasher().row_hash(orjson.loads(lines[bad_line - 2]))
    assert evidence["error.type"] == "chain_broken" and breaks[0]["status"]["code"] == 2
    assert evidence["gen_ai.operation.name"] == "execute_tool"
    assert sum(1 for v in verdicts.values() if v == "break") == len(breaks)
    assert all(verified[o] is (verdicts[o] == "ok") for o in verified)
    checkpoint = load_checkpoint(tmp_path / "cp.json")
    assert checkpoint["chain"]["breaks"] == len(breaks)


def test_genesis_in_mid_stream_is_reported_as_a_restart(tmp_path: Path, audit_cli: str) -> None:
    audit = tmp_path / "audit.jsonl"
    AuditWriter(audit).append(10)
    AuditWriter(audit, session="s-2").append(5)  # a second chain, from GENESIS
    with Collector() as collector:
        result = run_once(audit_cli, audit, tmp_path / "cp.json", collector.endpoint)
        spans = collector.accepted_spans()
    assert not broken_spans(spans)  # a new chain is not tampering: no alarm, a verdict and a warning
    restarted = row_spans(spans)[10]
    assert attrs(restarted)["audit.chain.verified"] is False and attrs(restarted)["audit.chain.verdict"] == "restart"
    assert all(attrs(s)["audit.chain.verdict"] == "ok" for s in row_spans(spans)[11:])
    assert "HASH CHAIN RESTARTS WITH GENESIS at line 11" in result.stderr


def test_no_false_break_across_restarts(tmp_path: Path, audit_cli: str) -> None:
    """--once, append, --once, append, --once: the chain state comes back from the checkpoint."""
    audit = tmp_path / "audit.jsonl"
    writer = AuditWriter(audit)
    checkpoint = tmp_path / "cp.json"
    with Collector() as collector:
        for batch in (25, 10, 1):
            writer.append(batch)
            run_once(audit_cli, audit, checkpoint, collector.endpoint)
        spans = collector.accepted_spans()
    assert len(spans) == 36
    assert_chain_intact(spans)
    assert not any("audit.chain.anchor" in attrs(s) for s in spans)
    assert load_checkpoint(checkpoint)["chain"]["breaks"] == 0


def test_partial_last_line_then_restart(tmp_path: Path, audit_cli: str) -> None:
    """A row held (no newline yet) at exit is verified against the right hash next time."""
    audit = tmp_path / "audit.jsonl"
    writer = AuditWriter(audit)
    data = writer.lines(6)
    append_bytes(audit, data[:-20])
    with Collector() as collector:
        run_once(audit_cli, audit, tmp_path / "cp.json", collector.endpoint)
        assert len(collector.accepted_spans()) == 5
        append_bytes(audit, data[-20:])
        writer.append(3)
        run_once(audit_cli, audit, tmp_path / "cp.json", collector.endpoint)
        spans = collector.accepted_spans()
    assert len(spans) == 9
    assert_chain_intact(spans)


def test_hmac_chain_and_wrong_key(tmp_path: Path, audit_cli: str) -> None:
    audit = tmp_path / "audit.jsonl"
    AuditWriter(audit, hasher=ChainHasher(b"k3y")).append(8)
    with Collector() as collector:
        run_once(audit_cli, audit, tmp_path / "right.json", collector.endpoint, {"AUDIT_OTLP_CHAIN_KEY": "k3y"})
        right = collector.accepted_spans()
        collector.requests.clear()
        result = run_once(audit_cli, audit, tmp_path / "wrong.json", collector.endpoint, {"AUDIT_OTLP_CHAIN_KEY": "nope"})
        wrong = collector.accepted_spans()
    assert len(right) == 8 and not broken_spans(right)
    assert len(broken_spans(wrong)) == 7  # every link fails with the wrong key
    for span in right + wrong:
        assert "k3y" not in orjson.dumps(span).decode() and "nope" not in orjson.dumps(span).decode()
    assert "nope" not in result.stderr


def test_verification_off(tmp_path: Path, audit_cli: str) -> None:
    audit = tmp_path / "audit.jsonl"
    lines = AuditWriter(tmp_path / "unused").lines(10).splitlines()
    TAMPERINGS["edit"](lines)
    audit.write_bytes(b"".join(line + b"\n" for line in lines))
    config = tmp_path / "c.toml"
    config.write_text("[chain]\nverify = false\n")
    with Collector() as collector:
        run_once(audit_cli, audit, tmp_path / "cp.json", collector.endpoint, None, "--config", str(config))
        spans = collector.accepted_spans()
    assert len(spans) == 10 and not broken_spans(spans)
    assert not any("audit.chain.verified" in attrs(s) or "audit.hash" in attrs(s) for s in spans)
