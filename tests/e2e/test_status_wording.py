"""What `status` and the daemon's log lines say, read as a person reads them: the endpoint the
last run really used (not the configured default when it ran with --endpoint), chain wording
that never contradicts itself ("intact", "2 breaks", "not verified"), counts that agree with
their nouns, and a resume line that is a sentence."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector
from tests.helpers.daemon import run_cli, write_config
from tests.helpers.tampering import tamper_edit

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"


def files(tmp: Path) -> list[str]:
    return ["--file", str(tmp / "audit.jsonl"), "--checkpoint", str(tmp / "cp.json")]


def run_once(audit_cli: str, tmp: Path, endpoint: str, *extra: str) -> str:
    result = run_cli(audit_cli, ["run", "--once", "--deadline", "30", *files(tmp), "--endpoint", endpoint, *extra])
    assert result.returncode == 0, result.stderr
    return result.stderr


def status(audit_cli: str, tmp: Path, *extra: str) -> str:
    result = run_cli(audit_cli, ["status", *files(tmp), *extra])
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_status_shows_the_endpoint_the_last_run_used_not_the_configured_default(tmp_path: Path, audit_cli: str) -> None:
    AuditWriter(tmp_path / "audit.jsonl").append(5)
    with Collector() as collector:
        run_once(audit_cli, tmp_path, collector.endpoint)
    doc = json.loads(status(audit_cli, tmp_path, "--json"))
    assert doc["endpoint"] == collector.endpoint and doc["configured_endpoint"] == DEFAULT_ENDPOINT
    assert f"endpoint:        {collector.endpoint} (the last run's)" in status(audit_cli, tmp_path)
    # Before any run, there is only the configuration to show.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    AuditWriter(fresh / "audit.jsonl").append(1)
    assert json.loads(status(audit_cli, fresh, "--json"))["endpoint"] == DEFAULT_ENDPOINT
    assert f"endpoint:        {DEFAULT_ENDPOINT}\n" in status(audit_cli, fresh)


def test_the_recorded_endpoint_keeps_no_credential(tmp_path: Path, audit_cli: str) -> None:
    AuditWriter(tmp_path / "audit.jsonl").append(3)
    with Collector() as collector:
        secret_url = collector.endpoint.replace("http://", "http://user:SECRET-PW@") + "?token=SECRET-TOKEN"
        run_once(audit_cli, tmp_path, secret_url)
    text = (tmp_path / "cp.json").read_text() + status(audit_cli, tmp_path) + status(audit_cli, tmp_path, "--json")
    assert "SECRET" not in text
    assert json.loads((tmp_path / "cp.json").read_text())["endpoint"].startswith("http://127.0.0.1:")


CHAIN_WORDING = [
    ("an intact chain", 0, True, "chain:           intact"),
    ("one edited row", 1, True, "chain:           1 break"),
    ("chain verification off", 1, False, "chain:           not verified"),
]


@pytest.mark.parametrize(("edits", "verify", "expected"), [c[1:] for c in CHAIN_WORDING], ids=[c[0] for c in CHAIN_WORDING])
def test_chain_wording_never_contradicts_itself(tmp_path: Path, audit_cli: str, edits: int, verify: bool, expected: str) -> None:
    AuditWriter(tmp_path / "audit.jsonl").append(12)
    if edits:
        lines = (tmp_path / "audit.jsonl").read_bytes().splitlines(keepends=True)
        tamper_edit(lines)
        (tmp_path / "audit.jsonl").write_bytes(b"".join(lines))
    config = write_config(tmp_path / "c.toml", chain={"verify": verify})
    with Collector() as collector:
        run_once(audit_cli, tmp_path, collector.endpoint, "--config", str(config))
    text = status(audit_cli, tmp_path, "--config", str(config))
    assert expected in text, text
    assert not re.search(r"verified, \d", text) and "1 breaks" not in text, text


def test_log_lines_read_as_sentences_on_resume(tmp_path: Path, audit_cli: str) -> None:
    writer = AuditWriter(tmp_path / "audit.jsonl")
    writer.append(4)
    with Collector() as collector:
        run_once(audit_cli, tmp_path, collector.endpoint)
        offset = (tmp_path / "audit.jsonl").stat().st_size
        writer.append(1)
        log = run_once(audit_cli, tmp_path, collector.endpoint)
    assert f"resuming at byte {offset} of {tmp_path / 'audit.jsonl'} (the checkpoint's own file)" in log, log
    assert "resuming at found" not in log and "resuming at same" not in log, log
    assert re.search(r"stopped: delivered 1 span of 1 row read, backlog 0 bytes, 0 batches in flight", log), log
