"""The one way tests run the installed `audit-otlp`: a clean environment, one-shot commands, and
`DaemonProcess` for a long-running daemon (log file, optional health port, SIGTERM/SIGKILL)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.helpers.wait import free_port, wait_until


def installed_cli() -> str | None:
    """The console script next to this interpreter (or on PATH); None when it is not installed."""
    return shutil.which("audit-otlp", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def daemon_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything that would configure the daemon, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "AUDIT_OTLP_", "SENTRY_", "DD_")) and k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET")
    }
    env.update(extra)
    return env


def run_cli(
    cli: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 60, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """One command to completion (`run --once`, `export`, `status`...), output captured as text."""
    return subprocess.run([cli, *args], capture_output=True, text=True, timeout=timeout, env=env or daemon_env(), **kw)


def checkpoint_view(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """A checkpoint document (format 2) as tests read it: its one source's state, with the
    position's keys (offset, file, last_line_sha256, ...) at the top, plus the document's own
    counters and version. None stays None."""
    if doc is None:
        return None
    assert doc.get("version") == 2 and isinstance(doc.get("sources"), dict), f"not a format-2 checkpoint: {str(doc)[:200]}"
    (source,) = doc["sources"].values()
    top = {k: v for k, v in doc.items() if k != "sources"}
    return {**top, **source, **source["position"]}


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """`checkpoint_view` of the file at `path`; None when there is none yet. A torn file raises."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return checkpoint_view(orjson.loads(data))


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


def write_fast_config(path: Path, text: str) -> Path:
    """A TOML config with fast retries and checkpoints for tests, plus `text`."""
    path.write_text(
        '[retry]\ninitial_backoff = "10ms"\nmax_backoff = "100ms"\nauth_backoff = "200ms"\n'
        '[checkpoint]\ninterval = "20ms"\n' + text
    )
    return path


@dataclass
class DaemonProcess:
    """`audit-otlp run` as a subprocess, stdout and stderr appended to `log_path`; with `health`,
    /healthz and /metrics on a free port (a new one at each start) and `start` waits for them."""

    cli: str
    source: Path | None
    checkpoint: Path
    endpoint: str
    log_path: Path
    config: Path | None = None
    env: dict[str, str] = field(default_factory=daemon_env)
    extra_args: list[str] = field(default_factory=list)
    health: bool = True
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    kills: int = 0

    def argv(self) -> list[str]:
        argv = [
            self.cli,
            "run",
            *(["--file", str(self.source)] if self.source is not None else []),  # None: the config's source.paths
            "--checkpoint",
            str(self.checkpoint),
            "--endpoint",
            self.endpoint,
            *self.extra_args,
        ]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        if self.health:
            self.port = free_port()
            argv += ["--health-listen", f"127.0.0.1:{self.port}"]
        return argv

    def start(self) -> DaemonProcess:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=self.env)
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

    def checkpoint_offset(self) -> int:
        """The checkpoint's offset; 0 before the first checkpoint is written."""
        doc = load_checkpoint(self.checkpoint)
        return int(doc["offset"]) if doc else 0

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.kills += 1

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"daemon ignored signal {sig} for {timeout} s:\n{self.log_text()[-3000:]}") from None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def fast_daemon(
    cli: str, tmp: Path, endpoint: str, config_text: str = "", env: dict[str, str] | None = None, audit: Path | None = None
) -> DaemonProcess:
    """A started daemon on `tmp/audit.jsonl` (or `audit`) with fast retries, checkpoint `tmp/cp.json`,
    config `tmp/daemon.toml` and a log of its own (`tmp/daemon-N.log`, one per start)."""
    config = write_fast_config(tmp / "daemon.toml", config_text)
    log = tmp / f"daemon-{len(list(tmp.glob('daemon-*.log')))}.log"
    daemon = DaemonProcess(
        cli, audit or tmp / "audit.jsonl", tmp / "cp.json", endpoint, log, config, env=daemon_env(**(env or {}))
    )
    return daemon.start()


@dataclass
class Workdir:
    """One daemon's files: the audit log, the checkpoint, the dead-letter file."""

    root: Path

    @property
    def audit(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "state" / "checkpoint.json"

    def args(self, endpoint: str, *extra: str) -> list[str]:
        return ["run", "--file", str(self.audit), "--checkpoint", str(self.checkpoint), "--endpoint", endpoint, *extra]

    def daemon(self, cli: str, endpoint: str, *extra: str, env: dict[str, str] | None = None) -> DaemonProcess:
        """A started daemon on these files (no health port unless `extra` asks for one)."""
        return DaemonProcess(
            cli,
            self.audit,
            self.checkpoint,
            endpoint,
            self.root / "daemon.log",
            env=env or daemon_env(),
            extra_args=list(extra),
            health=False,
        ).start()

    def checkpoint_doc(self) -> dict[str, Any] | None:
        return load_checkpoint(self.checkpoint)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name or name{labels}: value} (a labelled sample only under its labels)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def scrape(port: int) -> dict[str, float]:
    """/metrics of a daemon (or health server) on 127.0.0.1:`port`, parsed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
        return parse_metrics(response.read().decode())
