"""SIGHUP: reloadable keys (log level, batch and retry settings) take effect in the running daemon;
changed keys that need a restart are named; an invalid new file keeps the running configuration."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

from audit_otlp.config import load_config
from audit_otlp.runtime.reload import plan_reload
from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector
from tests.helpers.wait import wait_until


class StderrLog:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._drain, args=(proc,), daemon=True)
        self._thread.start()

    def _drain(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 20.0) -> bool:
        return wait_until(lambda: needle in self.text(), timeout, 0.05)


def test_sighup_applies_batch_and_log_level_and_names_keys_needing_restart(tmp_path: Path, audit_cli: str) -> None:
    config = tmp_path / "audit-otlp.toml"
    config.write_text('[batch]\nmax_spans = 100\nmax_wait = "50ms"\n')
    writer = AuditWriter(tmp_path / "audit.jsonl")
    writer.append(30)
    with Collector() as collector:
        proc = subprocess.Popen(
            [
                audit_cli,
                "run",
                "--config",
                str(config),
                "--file",
                str(tmp_path / "audit.jsonl"),
                "--checkpoint",
                str(tmp_path / "cp.json"),
                "--endpoint",
                collector.endpoint,
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        log = StderrLog(proc)
        try:
            assert collector.wait_for_spans(30)
            assert [len(r.spans) for r in collector.accepted()] == [30]
            assert "request: status=" not in log.text()  # info level: no per-request lines

            config.write_text(
                '[batch]\nmax_spans = 4\nmax_wait = "50ms"\n[log]\nlevel = "debug"\n'
                '[retry]\nmax_backoff = "10s"\n[export]\nmax_in_flight = 2\n'
            )
            proc.send_signal(signal.SIGHUP)
            assert log.wait_for("SIGHUP: configuration reloaded"), log.text()
            reload_line = next(line for line in log.lines if "SIGHUP" in line)
            assert "batch.max_spans (100 -> 4)" in reload_line and "log.level ('info' -> 'debug')" in reload_line
            assert "retry.max_backoff (30.0 -> 10.0)" in reload_line
            assert "need a restart" in reload_line and "export.max_in_flight (4 -> 2)" in reload_line

            writer.append(10)
            assert collector.wait_for_spans(40)
            assert [len(r.spans) for r in collector.accepted()][1:] == [4, 4, 2]  # the new batch size
            assert log.wait_for("request: status=200 spans=4")  # the new log level

            config.write_text("[batch]\nmax_spans = -1\n")  # invalid: refused, the daemon keeps going
            proc.send_signal(signal.SIGHUP)
            assert log.wait_for("keeping the running one"), log.text()
            assert "batch.max_spans" in next(line for line in log.lines if "keeping the running one" in line)
            writer.append(4)
            assert collector.wait_for_spans(44)
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_reload_plan_masks_secrets_and_keeps_restart_only_values(tmp_path: Path) -> None:
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20old-secret-token"}
    before = load_config(None, {"endpoint": "http://127.0.0.1:4318/v1/traces"}, env)
    env2 = {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20new-secret-token"}
    (tmp_path / "c.toml").write_text("[batch]\nmax_wait = 1\n")
    after = load_config(tmp_path / "c.toml", {"endpoint": "http://other:4318/v1/traces"}, env2)
    plan = plan_reload(before, after)
    assert set(plan.applied) == {"batch.max_wait"}
    assert {"export.endpoint", "export.headers"} <= set(plan.needs_restart)
    text = plan.describe()
    assert "secret-token" not in text and "new-secret" not in repr(plan.needs_restart)
    # Restart-only keys keep their running values; reloadable ones take the new value.
    assert plan.config.export.endpoint == "http://127.0.0.1:4318/v1/traces"
    assert plan.config.export.headers == before.export.headers
    assert plan.config.batch.max_wait == 1.0
    assert plan.config.secrets == before.secrets


def test_every_reloadable_key_has_a_place_where_it_takes_effect() -> None:
    """A key marked reloadable in the key table must be applied by the running daemon."""
    from audit_otlp.config import KEYS
    from audit_otlp.runtime.lifecycle import Daemon

    sections = {key.name.split(".", 1)[0] for key in KEYS if key.reloadable}
    assert sections <= set(Daemon.RELOAD_APPLIERS)
