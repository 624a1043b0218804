"""Mapping on the second core (runtime/maphelper.py), with the installed daemon and a real
collector: the helper changes nothing that is sent or checkpointed, exits once caught up, dies
with the daemon, and a lost helper ends the run without losing a row."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.test_chain_daemon import run_once
from tests.helpers.auditgen import AuditWriter, append_bytes
from tests.helpers.collector import Collector, Mood, Reply, attrs
from tests.helpers.daemon import DaemonProcess, load_checkpoint, write_config
from tests.helpers.wait import wait_until
from tests.torture.harness import acknowledged_seqs, duplicates, fault_pause, quiet, wait_delivered_or_quiet

MAX_SPANS, MAX_IN_FLIGHT = 50, 4
STARTED = "mapping in a helper process"


def helper_config(path: Path, min_backlog: str, **extra: dict[str, Any]) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "mapping": {"helper_min_backlog": min_backlog},
        "batch": {"max_spans": MAX_SPANS, "max_wait": "50ms"},
        "export": {"max_in_flight": MAX_IN_FLIGHT},
        "retry": {"initial_backoff": "20ms", "max_backoff": "200ms"},
        "source": {"max_line_bytes": 4096},
        "log": {"level": "debug"},
    }
    for section, keys in extra.items():
        sections.setdefault(section, {}).update(keys)
    return write_config(path, **sections)


def children(pid: int) -> set[int]:
    """The processes `pid` started (from any of its threads)."""
    found: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                found |= {int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()}
            except OSError:
                continue
    except OSError:
        pass
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def awkward_log(path: Path, rows: int) -> AuditWriter:
    """Chained rows with what the mapping stage must get right across chunks: a tampered row
    (a chain break and its evidence span), a line that is not JSON, blank lines, identical lines
    (distinct span ids) and a line over source.max_line_bytes (mapped by the daemon itself)."""
    writer = AuditWriter(path)
    rng = random.Random(7)
    for block in range(rows // 500):
        writer.append(500)
        kind = block % 5
        if kind == 0:
            append_bytes(path, b"this is not json, block %d\n\n" % block)  # unique: identical lines far apart share an id
        elif kind == 1:
            twin = writer.lines(1)
            append_bytes(path, twin + twin + twin)
        elif kind == 2:
            edited = orjson.loads(writer.lines(1))
            edited["target"] = "edited-after-the-fact"
            append_bytes(path, orjson.dumps(edited) + b"\n")  # its successor names the original: a break
        elif kind == 3 and rng.random() < 0.9:
            append_bytes(path, orjson.dumps(writer.row(target="x" * 6000)) + b"\n")
    return writer


def comparable(span: dict[str, Any]) -> tuple[str, bytes]:
    doc = dict(span)
    if doc["name"] == "audit.malformed_line":  # its time is when it was read
        doc.pop("startTimeUnixNano"), doc.pop("endTimeUnixNano")
    return doc["spanId"], orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def test_the_helper_sends_and_checkpoints_exactly_what_the_daemon_alone_does(audit_cli: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    awkward_log(audit, 12_000)
    results = {}
    for name, min_backlog in (("helper", "1"), ("alone", "off")):
        config = helper_config(tmp_path / f"{name}.toml", min_backlog)
        with Collector() as collector:
            done = run_once(audit_cli, audit, tmp_path / f"{name}.json", collector.endpoint, None, "--config", str(config))
            assert (STARTED in done.stderr) == (name == "helper"), done.stderr[-3000:]
            spans = collector.accepted_spans()
        assert len({s["spanId"] for s in spans}) == len(spans), "a span was sent twice (or two spans share an id)"
        results[name] = (dict(map(comparable, spans)), load_checkpoint(tmp_path / f"{name}.json"))
    (helper_spans, helper_cp), (alone_spans, alone_cp) = results["helper"], results["alone"]
    assert helper_spans.keys() == alone_spans.keys()
    different = [k for k in alone_spans if helper_spans[k] != alone_spans[k]]
    assert not different, (helper_spans[different[0]], alone_spans[different[0]])
    broken = [s for s in map(orjson.loads, helper_spans.values()) if s["name"] == "audit.chain_broken"]
    assert broken and any(attrs(s).get("error.type") == "chain_broken" for s in broken)  # the corpus did test breaks
    assert helper_cp is not None and alone_cp is not None
    for key in ("offset", "last_line_sha256", "line_number", "chain_last_hash"):
        if key in alone_cp:
            assert helper_cp[key] == alone_cp[key], key


def test_the_helper_runs_only_while_there_is_a_backlog(audit_cli: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    writer = AuditWriter(audit)
    writer.append(8000)
    config = helper_config(tmp_path / "c.toml", "256KiB")
    with quiet(Collector()) as collector:
        daemon = DaemonProcess(audit_cli, audit, tmp_path / "cp.json", collector.endpoint, tmp_path / "d.log", config).start()
        try:
            assert daemon.proc is not None
            assert collector.wait_for_spans(8000, 60), daemon.log_text()[-3000:]
            assert wait_until(lambda: not children(daemon.proc.pid), 10), "a helper outlived the backlog"  # type: ignore[union-attr]
            writer.append(8000)  # a new burst: the helper again, and gone again
            assert collector.wait_for_spans(16000, 60), daemon.log_text()[-3000:]
            assert wait_until(lambda: not children(daemon.proc.pid), 10), "a helper outlived the backlog"  # type: ignore[union-attr]
            writer.append(20)  # a trickle is mapped by the daemon itself
            assert collector.wait_for_spans(16020, 30)
        finally:
            assert daemon.stop() == 0, daemon.log_text()[-3000:]
    assert daemon.log_text().count(STARTED) == 2, daemon.log_text()[-3000:]
    assert sorted(collector.accepted_seqs()) == list(range(1, 16021))


@pytest.mark.timeout(300)
def test_sigkill_while_the_helper_maps_loses_no_row_and_leaves_no_helper(audit_cli: str, tmp_path: Path) -> None:
    """A slow collector (0.1-0.3 s per request) and a backlog, SIGKILLs at random moments while
    the helper maps: the helper exits with the daemon, nothing is lost, and what is repeated is
    within the in-flight window (the helper's chunks are never delivered before they are applied)."""
    audit = tmp_path / "audit.jsonl"
    writer = AuditWriter(audit)
    writer.append(30_000)
    config = helper_config(tmp_path / "c.toml", "64KiB")
    rng = random.Random(11)
    kills = 0
    with quiet(Collector(Mood("slow", slow=(0.1, 0.3), seed=3))) as collector:
        for _ in range(3):
            daemon = DaemonProcess(audit_cli, audit, tmp_path / "cp.json", collector.endpoint, tmp_path / "d.log", config).start()
            assert daemon.proc is not None
            assert wait_until(lambda: bool(children(daemon.proc.pid)), 20), daemon.log_text()[-3000:]  # type: ignore[union-attr]
            helpers = children(daemon.proc.pid)
            fault_pause(rng.uniform(0.2, 1.5))  # a random moment of the catch-up
            writer.append(rng.randint(100, 2000))
            daemon.kill()
            kills += 1
            assert wait_until(lambda: not any(alive(pid) for pid in helpers), 10), "the helper outlived a SIGKILLed daemon"
        collector.responder = lambda doc, n: Reply()  # the collector back to instant
        daemon = DaemonProcess(audit_cli, audit, tmp_path / "cp.json", collector.endpoint, tmp_path / "d.log", config).start()
        expected = set(range(1, writer.seq + 1))
        try:
            assert wait_delivered_or_quiet(collector, daemon, expected, timeout=120), daemon.log_text()[-3000:]
        finally:
            assert daemon.stop() == 0, daemon.log_text()[-3000:]
    counts = acknowledged_seqs(collector)
    assert not expected - set(counts)
    assert duplicates(counts) <= kills * 2 * MAX_IN_FLIGHT * MAX_SPANS, duplicates(counts)


def test_a_killed_helper_ends_the_run_and_the_next_loses_nothing(audit_cli: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    writer = AuditWriter(audit)
    writer.append(30_000)
    config = helper_config(tmp_path / "c.toml", "64KiB")
    with quiet(Collector(Mood("slow", slow=0.2, seed=1))) as collector:
        daemon = DaemonProcess(audit_cli, audit, tmp_path / "cp.json", collector.endpoint, tmp_path / "d.log", config).start()
        assert daemon.proc is not None
        assert wait_until(lambda: bool(children(daemon.proc.pid)), 20), daemon.log_text()[-3000:]  # type: ignore[union-attr]
        for pid in children(daemon.proc.pid):
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: daemon.proc.poll() is not None, 30), daemon.log_text()[-3000:]  # type: ignore[union-attr]
        assert daemon.proc.returncode == 3, daemon.log_text()[-3000:]
        assert "the mapping helper process stopped (killed by signal 9)" in daemon.log_text()
        collector.responder = lambda doc, n: Reply()  # the collector back to instant
        again = DaemonProcess(audit_cli, audit, tmp_path / "cp.json", collector.endpoint, tmp_path / "d.log", config).start()
        try:
            assert wait_delivered_or_quiet(collector, again, set(range(1, 30_001)), timeout=120), again.log_text()[-3000:]
        finally:
            assert again.stop() == 0, again.log_text()[-3000:]
