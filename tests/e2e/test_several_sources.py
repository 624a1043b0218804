"""Several audit logs in one daemon (`source.paths`, issue 13 item 6): the main log and every
`plugins/*/state/audit.jsonl`, each with its own hash chain, position and rotation state, one
checkpoint for all, every span naming its file (`audit.source`), `status` showing each. The
installed daemon, real files, a real collector, a SIGKILL and rotations of two of the files."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector, attrs, seq_of
from tests.helpers.daemon import DaemonProcess, daemon_env, run_cli, write_config
from tests.helpers.rotation import rotate
from tests.helpers.wait import wait_until
from tests.torture.harness import quiet

pytestmark = pytest.mark.timeout(120)


def test_several_audit_logs_each_keep_their_chain_position_and_rotations(audit_cli: str, tmp_path: Path) -> None:
    main = tmp_path / "state" / "audit.jsonl"
    plugins = [tmp_path / "plugins" / name / "state" / "audit.jsonl" for name in ("action-guard", "secret-scanner")]
    for path in [main, *plugins]:
        path.parent.mkdir(parents=True)
    writers = [AuditWriter(path, seq=base) for path, base in zip([main, *plugins], (0, 100_000, 200_000))]
    config = write_config(
        tmp_path / "audit-otlp.toml",
        source={"paths": "__PATHS__", "poll_interval": "200ms"},
        batch={"max_wait": "50ms", "max_spans": 100},
        retry={"initial_backoff": "50ms", "max_backoff": "200ms"},
    )
    config.write_text(
        config.read_text().replace('"__PATHS__"', json.dumps([str(main), str(tmp_path / "plugins/*/state/audit.jsonl")]))
    )
    checkpoint = tmp_path / "cp" / "checkpoint.json"
    for writer in writers:
        writer.append(300)
    expected = {s for w in writers for s in range(w.seq - 299, w.seq + 1)}
    with quiet(Collector()) as collector:
        # No --file: source.paths decides.
        daemon = DaemonProcess(audit_cli, None, checkpoint, collector.endpoint, tmp_path / "daemon.log", config).start()
        assert wait_until(lambda: expected <= set(collector.accepted_seqs()), 30), daemon.log_text()[-3000:]
        # Rotate two of the files differently, write more, kill, write while stopped, restart.
        rotate(main, "tail_rewrite")
        rotate(plugins[0], "rename")
        for writer in writers:
            writer.append(200)
        daemon.kill()
        for writer in writers:
            writer.append(50)
        daemon.start()
        expected = {s for w in writers for s in range(w.seq - 549, w.seq + 1)}
        assert wait_until(lambda: expected <= set(collector.accepted_seqs()), 30), daemon.log_text()[-3000:]
        assert daemon.stop() == 0
        spans = collector.accepted_spans()
    sources = {seq_of(s): attrs(s).get("audit.source") for s in spans if seq_of(s) is not None}
    assert {sources[w.seq] for w in writers} == {str(main), *map(str, plugins)}
    assert all(sources[s] == str(main) for s in sources if s < 100_000)
    assert not [s for s in spans if s.get("name") == "audit.chain_broken"], "each file is its own chain"
    counts = collections.Counter(seq_of(s) for s in spans if seq_of(s) is not None)
    assert set(counts) == expected  # nothing lost; a SIGKILL may repeat what was in flight
    doc = json.loads(checkpoint.read_text())
    assert doc["version"] == 2 and set(doc["sources"]) == {str(main), *map(str, plugins)}
    status = json.loads(
        run_cli(
            audit_cli, ["status", "--json", "--checkpoint", str(checkpoint), "--config", str(config)], env=daemon_env()
        ).stdout
    )
    assert [s["file"] for s in status["sources"]] == [str(main), *map(str, sorted(plugins))]
    assert status["backlog_rows"] == 0 and all(s["backlog_rows"] == 0 for s in status["sources"])


def test_a_plugin_log_created_after_start_is_followed_without_a_restart(audit_cli: str, tmp_path: Path) -> None:
    """A sibling plugin installed while the daemon runs: the glob matches its log at the next
    rescan, every row of it arrives (those written before it was found too), its position is in
    the checkpoint, and a SIGKILL and restart resume it there rather than sending it again."""
    first = tmp_path / "plugins" / "action-guard" / "state" / "audit.jsonl"
    late = tmp_path / "plugins" / "egress-shield" / "state" / "audit.jsonl"
    first.parent.mkdir(parents=True)
    config = write_config(
        tmp_path / "audit-otlp.toml",
        source={"paths": "__PATHS__", "poll_interval": "200ms", "rescan_interval": "300ms"},
        batch={"max_wait": "50ms", "max_spans": 50},
        retry={"initial_backoff": "50ms", "max_backoff": "200ms"},
    )
    config.write_text(config.read_text().replace('"__PATHS__"', json.dumps([str(tmp_path / "plugins/*/state/audit.jsonl")])))
    checkpoint = tmp_path / "cp" / "checkpoint.json"
    early, later = AuditWriter(first), AuditWriter(late, seq=100_000)
    early.append(100)
    with quiet(Collector()) as collector:
        daemon = DaemonProcess(audit_cli, None, checkpoint, collector.endpoint, tmp_path / "daemon.log", config).start()
        assert wait_until(lambda: set(range(1, 101)) <= set(collector.accepted_seqs()), 30), daemon.log_text()[-3000:]
        late.parent.mkdir(parents=True)
        later.append(150)  # before the daemon can know of the file
        early.append(20)
        expected = set(range(1, 121)) | set(range(100_001, 100_151))
        assert wait_until(lambda: expected <= set(collector.accepted_seqs()), 30), daemon.log_text()[-3000:]
        assert f"following {late} too" in daemon.log_text()
        late_size = late.stat().st_size

        def late_settled() -> bool:
            source = json.loads(checkpoint.read_text())["sources"].get(str(late))
            return source is not None and source["position"]["offset"] == late_size

        assert wait_until(late_settled, 10), checkpoint.read_text()[:2000]
        daemon.kill()
        later.append(30)
        daemon.start()
        expected |= set(range(100_151, 100_181))
        assert wait_until(lambda: expected <= set(collector.accepted_seqs()), 30), daemon.log_text()[-3000:]
        assert daemon.stop() == 0
        spans = collector.accepted_spans()
    sources = {seq_of(s): attrs(s).get("audit.source") for s in spans if seq_of(s) is not None}
    assert all(sources[s] == str(late) for s in expected if s > 100_000)
    assert all(sources[s] == str(first) for s in expected if s < 100_000)
    counts = collections.Counter(seq_of(s) for s in spans if seq_of(s) is not None)
    assert set(counts) == expected
    # Its position was in the checkpoint when it was killed: the restart resumed it there.
    assert all(counts[s] == 1 for s in range(100_001, 100_181))
    assert not [s for s in spans if s.get("name") == "audit.chain_broken"]


def test_a_glob_matching_one_file_finds_that_files_rotated_copies(audit_cli: str, tmp_path: Path) -> None:
    """With one match the daemon still treats a glob as several sources (more may match later):
    its spans name the file from the first, and a copytruncate while it was stopped is found in
    that file's own rotated copies (`<file>.*`) and loses nothing."""
    only = tmp_path / "plugins" / "action-guard" / "state" / "audit.jsonl"
    only.parent.mkdir(parents=True)
    config = write_config(
        tmp_path / "audit-otlp.toml",
        source={"paths": "__PATHS__", "poll_interval": "200ms"},
        batch={"max_wait": "50ms"},
        retry={"initial_backoff": "50ms", "max_backoff": "200ms"},
    )
    config.write_text(config.read_text().replace('"__PATHS__"', json.dumps([str(tmp_path / "plugins/*/state/audit.jsonl")])))
    checkpoint = tmp_path / "cp" / "checkpoint.json"
    writer = AuditWriter(only)
    writer.append(50)
    with quiet(Collector()) as collector:
        daemon = DaemonProcess(audit_cli, None, checkpoint, collector.endpoint, tmp_path / "daemon.log", config).start()
        assert wait_until(lambda: set(range(1, 51)) <= set(collector.accepted_seqs()), 30), daemon.log_text()[-3000:]
        assert daemon.stop() == 0
        writer.append(30)  # written while it is stopped, then rotated away
        rotate(only, "copytruncate")  # the copy is found by the glob only
        writer.append(20)
        daemon.start()
        assert wait_until(lambda: set(range(1, 101)) <= set(collector.accepted_seqs()), 30), daemon.log_text()[-3000:]
        assert daemon.stop() == 0
        spans = collector.accepted_spans()
    assert "RESUME GAP" not in daemon.log_text()
    counts = collections.Counter(seq_of(s) for s in spans if seq_of(s) is not None)
    assert set(counts) == set(range(1, 101)) and max(counts.values()) == 1
    assert {attrs(s).get("audit.source") for s in spans} == {str(only)}
