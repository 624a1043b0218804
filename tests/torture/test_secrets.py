"""No configured secret ever shows: every kind of secret is set (OTLP header values, a Sentry DSN
key, a Datadog API key, the chain key, a user and password in the endpoint URL), then the daemon
is run through its success and error paths (2xx, 401, 503, 400 with dead-lettering, an
unreachable endpoint, a bad configuration) and every output is searched: stdout, stderr, logs
(text and json, debug level, --verbose), /metrics /readyz /healthz, status, status --json,
check-config (text and --json), the checkpoint, dead-letter and receipts files, and every span
body the collector received. Vendor credentials must not even be sent (the endpoint is not the
vendor's host).
"""

from __future__ import annotations

import base64
import subprocess
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector, Reply
from tests.helpers.daemon import DaemonProcess, daemon_env, write_config
from tests.helpers.wait import wait_until

HEADER_SECRET = "HDRsecret-7f3a91c2"
BEARER_SECRET = "BEARERsecret-55e0d1"
SENTRY_KEY = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
DD_KEY = "DDkey-0123456789abcdef0123456789ab"
CHAIN_KEY = "CHAINkey-s3cr3t-ü-9d"
URL_USER = "URLuser-4c1d"
URL_PASSWORD = "URLpass-e8b2f7"

SECRETS = [HEADER_SECRET, BEARER_SECRET, SENTRY_KEY, DD_KEY, CHAIN_KEY, URL_USER, URL_PASSWORD]


def forbidden_forms() -> list[bytes]:
    """Each secret as text, URL-encoded, JSON-escaped, and the basic-auth header made from the URL."""
    forms: set[bytes] = set()
    for s in SECRETS:
        forms |= {s.encode(), urllib.parse.quote(s).encode(), orjson.dumps(s)[1:-1]}
    forms.add(base64.b64encode(f"{URL_USER}:{URL_PASSWORD}".encode()))
    return sorted(forms)


def secret_env() -> dict[str, str]:
    return daemon_env(
        OTEL_EXPORTER_OTLP_HEADERS=f"x-api-key={HEADER_SECRET},authorization=Bearer%20{BEARER_SECRET}",
        SENTRY_DSN=f"https://{SENTRY_KEY}@o4501.ingest.sentry.io/4242",
        DD_API_KEY=DD_KEY,
        AUDIT_OTLP_CHAIN_KEY=CHAIN_KEY,
        AUDIT_OTLP_LOG_LEVEL="debug",
    )


def with_userinfo(endpoint: str) -> str:
    parts = urllib.parse.urlsplit(endpoint)
    return parts._replace(netloc=f"{URL_USER}:{URL_PASSWORD}@{parts.netloc}").geturl()


def find_leaks(where: str, data: bytes) -> list[str]:
    return [f"{where}: {form.decode(errors='replace')!r}" for form in forbidden_forms() if form in data]


class Outputs:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def add(self, where: str, data: bytes | str) -> None:
        self.items.append((where, data.encode() if isinstance(data, str) else data))

    def add_process(self, where: str, done: subprocess.CompletedProcess[bytes]) -> None:
        self.add(f"{where} stdout", done.stdout)
        self.add(f"{where} stderr", done.stderr)

    def add_files(self, directory: Path) -> None:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and path.name != "audit.jsonl":
                self.add(str(path.relative_to(directory)), path.read_bytes())

    def leaks(self) -> list[str]:
        return [leak for where, data in self.items for leak in find_leaks(where, data)]


def workspace(tmp_path: Path, name: str, log_format: str = "text") -> tuple[Path, Path]:
    work = tmp_path / name
    work.mkdir()
    AuditWriter(work / "audit.jsonl").append(30)
    config = write_config(
        work / "audit-otlp.toml",
        batch={"max_spans": 10, "max_wait": "20ms"},
        retry={"initial_backoff": "50ms", "max_backoff": "200ms", "auth_backoff": "200ms"},
        delivery={"receipts_path": str(work / "state" / "receipts.jsonl")},
        dead_letter={"path": str(work / "state" / "dead-letter.jsonl")},
        log={"format": log_format},
        shutdown={"grace_period": "500ms"},
    )
    return work, config


def run_once(cli: str, work: Path, config: Path, endpoint: str, deadline: str = "3") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            cli,
            "run",
            "--once",
            "-v",
            "--deadline",
            deadline,
            "--config",
            str(config),
            "--file",
            str(work / "audit.jsonl"),
            "--checkpoint",
            str(work / "state" / "checkpoint.json"),
            "--endpoint",
            endpoint,
        ],
        capture_output=True,
        timeout=90,
        env=secret_env(),
    )


def commands(cli: str, targets: list[tuple[Path, Path, str, bool]], out: Outputs) -> None:
    """status (text, --json) in each workspace; check-config (text, --json) where asked; all at once."""
    jobs: list[tuple[str, list[str]]] = []
    for work, config, endpoint, check_config in targets:
        common = [
            "--config",
            str(config),
            "--file",
            str(work / "audit.jsonl"),
            "--checkpoint",
            str(work / "state" / "checkpoint.json"),
            "--endpoint",
            endpoint,
        ]
        argvs = [["status"], ["status", "--json"]] + ([["check-config"], ["check-config", "--json"]] if check_config else [])
        jobs += [(f"{' '.join(argv)} ({work.name})", [cli, *argv, *common]) for argv in argvs]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda job: subprocess.run(job[1], capture_output=True, timeout=60, env=secret_env()), jobs))
    for (where, _), done in zip(jobs, results):
        assert done.returncode == 0, (where, done.stderr)
        out.add_process(where, done)


def test_no_secret_in_any_output(audit_cli: str, tmp_path: Path) -> None:
    out = Outputs()
    sent: list[tuple[str, bytes]] = []  # what collectors received: (where, body or headers)
    answers = {
        "ok": Reply(200),
        "401": Reply(401, b'{"message":"unauthorized"}'),
        "503": Reply(503, b"{}"),
        "400": Reply(400, b'{"message":"bad span"}'),
    }
    collectors = {name: Collector(lambda doc, n, r=reply: r) for name, reply in answers.items()}
    for c in collectors.values():
        c.__enter__()
    try:
        endpoints = {name: with_userinfo(c.endpoint) for name, c in collectors.items()}
        endpoints["unreachable"] = with_userinfo("http://127.0.0.1:9/v1/traces")
        # Each path with text logs, the main two also with json logs, all at once (most wait out a deadline).
        formats = {name: ("text", "json") if name in ("ok", "401") else ("text",) for name in endpoints}
        works = {f"{name}-{fmt}": workspace(tmp_path, f"{name}-{fmt}", fmt) for name in endpoints for fmt in formats[name]}

        def run(name: str) -> subprocess.CompletedProcess[bytes]:
            kind = name.split("-")[0]
            return run_once(audit_cli, *works[name], endpoints[kind], "30" if kind in ("ok", "400") else "3")

        with ThreadPoolExecutor(len(works)) as pool:
            done = dict(zip(works, pool.map(run, works)))
        for name, proc in done.items():
            kind = name.split("-")[0]
            expected = 0 if kind in ("ok", "400") else 1  # 400: dead-lettered and settled; others: deadline
            assert proc.returncode == expected, (name, proc.returncode, proc.stderr[-2000:])
            out.add_process(f"run --once ({name})", proc)
        assert (works["400-text"][0] / "state" / "dead-letter.jsonl").stat().st_size > 0
        # status after each path (text-log workspaces); check-config once (the config is the same).
        commands(audit_cli, [(*works[f"{name}-text"], endpoints[name], name == "ok") for name in endpoints], out)
        for work, _ in works.values():
            out.add_files(work)

        # The daemon with its health endpoints, after delivering.
        work, config = works["ok-json"]
        AuditWriter(work / "audit2.jsonl").append(5)
        daemon = DaemonProcess(
            audit_cli,
            work / "audit2.jsonl",
            work / "state" / "cp2.json",
            endpoints["ok"],
            work / "daemon.log",
            config,
            env=secret_env(),
        )
        daemon.start()
        try:
            assert wait_until(lambda: daemon.metrics().get("audit_otlp_spans_delivered_total", 0) >= 5, 30)
            for path in ("/metrics", "/readyz", "/healthz"):
                got = daemon.get(path)
                assert got is not None
                out.add(path, got[1])
        finally:
            assert daemon.stop() == 0
        out.add("daemon log", daemon.log_text())

        for name, c in collectors.items():
            for r in c.requests:
                sent.append((f"{name} body", orjson.dumps(r.doc)))
                sent.append((f"{name} headers", orjson.dumps(r.headers)))
        assert collectors["ok"].accepted_spans(), "nothing was delivered: the test would prove nothing"
    finally:
        for c in collectors.values():
            c.__exit__(None, None, None)

    leaks = out.leaks()
    # Bodies may carry no secret at all; headers may carry the OTLP headers and the endpoint's own
    # basic auth (they are for this endpoint), but never a vendor credential (not the vendor's host).
    for where, data in sent:
        if where.endswith("body"):
            leaks += find_leaks(where, data)
        else:
            leaks += [
                f"{where}: vendor credential sent to a non-vendor host"
                for s in (SENTRY_KEY, DD_KEY, CHAIN_KEY)
                if s.encode() in data
            ]
    assert not leaks, "\n".join(leaks[:30])
    # And the endpoint's own credentials were really configured (so the searches above mean something).
    assert any(HEADER_SECRET.encode() in data for where, data in sent if where.endswith("headers"))


def test_datadog_key_only_goes_to_datadog(audit_cli: str, tmp_path: Path) -> None:
    """With DD_API_KEY alone and an explicit endpoint elsewhere, the key is not sent."""
    work, config = workspace(tmp_path, "dd")
    with Collector() as collector:
        env = daemon_env(DD_API_KEY=DD_KEY, AUDIT_OTLP_LOG_LEVEL="debug")
        done = subprocess.run(
            [
                audit_cli,
                "run",
                "--once",
                "-v",
                "--deadline",
                "20",
                "--config",
                str(config),
                "--file",
                str(work / "audit.jsonl"),
                "--checkpoint",
                str(work / "state" / "checkpoint.json"),
                "--endpoint",
                collector.endpoint,
            ],
            capture_output=True,
            timeout=60,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert collector.requests
        for r in collector.requests:
            assert DD_KEY.encode() not in orjson.dumps(r.headers) + orjson.dumps(r.doc)
    assert DD_KEY.encode() not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "env_name, value",
    [
        ("OTEL_EXPORTER_OTLP_HEADERS", f"{HEADER_SECRET}-without-equals"),
        ("SENTRY_DSN", f"https://{SENTRY_KEY}@sentry.example/not-a-project"),
        ("DD_SITE", f"{DD_KEY}.example"),
    ],
)
def test_bad_config_error_does_not_echo_secrets(audit_cli: str, tmp_path: Path, env_name: str, value: str) -> None:
    env = secret_env()
    env[env_name] = value
    if env_name == "DD_SITE":
        del env["SENTRY_DSN"]  # Sentry wins over Datadog: let DD_SITE be read
    for argv in (
        ["check-config"],
        ["run", "--once", "--file", str(tmp_path / "a.jsonl"), "--checkpoint", str(tmp_path / "cp.json")],
    ):
        done = subprocess.run([audit_cli, *argv], capture_output=True, timeout=60, env=env)
        assert done.returncode == 2, done.stderr
        leaks = find_leaks(" ".join(argv), done.stdout + done.stderr)
        assert not leaks, leaks
