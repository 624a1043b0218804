"""`audit-otlp check-config`: the effective configuration, where each value came from, and not one
secret (headers, DSN, Datadog key, chain key, URL credentials) in its output, text or JSON."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from audit_otlp.config import KEYS
from tests.helpers.paths import REPO

HEADER_TOKEN = "hdr-s3cret-token-0001"
URL_PASSWORD = "url-pa55word-0002"
URL_QUERY_TOKEN = "query-t0ken-0003"
SENTRY_KEY = "0123456789abcdef0123456789abcdef"
DD_KEY = "dd-api-key-value-0004"
CHAIN_KEY = "chain-hmac-key-0005"
CHAIN_KEY_FILE_CONTENT = "chain-key-from-file-0006"


def check_config(audit_cli: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUDIT_OTLP_", "SENTRY_", "DD_"))}
    return subprocess.run([audit_cli, "check-config", *args], capture_output=True, text=True, timeout=60, env={**clean, **env})


def assert_no_secret(text: str) -> None:
    for secret in (HEADER_TOKEN, URL_PASSWORD, URL_QUERY_TOKEN, SENTRY_KEY, DD_KEY, CHAIN_KEY, CHAIN_KEY_FILE_CONTENT):
        assert secret not in text, secret


@pytest.mark.parametrize("output", ["text", "json"])
def test_secrets_in_headers_url_and_chain_key_are_masked(tmp_path: Path, audit_cli: str, output: str) -> None:
    (tmp_path / "c.toml").write_text(
        f'[export]\nendpoint = "https://user:{URL_PASSWORD}@collector.example:4318/v1/traces?token={URL_QUERY_TOKEN}"\n'
        f'[export.headers]\nauthorization = "Bearer {HEADER_TOKEN}"\n'
    )
    env = {"AUDIT_OTLP_CHAIN_KEY": CHAIN_KEY, "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"x-api-key={HEADER_TOKEN}"}
    result = check_config(audit_cli, "--config", str(tmp_path / "c.toml"), *(["--json"] if output == "json" else []), env=env)
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout + result.stderr)
    assert "collector.example:4318" in result.stdout and "***" in result.stdout


@pytest.mark.parametrize(
    "env",
    [
        {"SENTRY_DSN": f"https://{SENTRY_KEY}@o123.ingest.sentry.io/4567"},
        {"DD_API_KEY": DD_KEY, "DD_SITE": "datadoghq.eu"},
    ],
    ids=["sentry-dsn", "datadog-key"],
)
def test_vendor_credentials_are_masked(audit_cli: str, env: dict[str, str]) -> None:
    for args in ((), ("--json",)):
        result = check_config(audit_cli, *args, env=env)
        assert result.returncode == 0, result.stderr
        assert_no_secret(result.stdout + result.stderr)
    doc = json.loads(result.stdout)
    vendor_env = next(iter(env))
    assert doc["origin"]["export.endpoint"] == f"env:{vendor_env}" and doc["origin"]["vendor"] == f"env:{vendor_env}"


def test_chain_key_file_content_never_shown(tmp_path: Path, audit_cli: str) -> None:
    (tmp_path / "key").write_text(CHAIN_KEY_FILE_CONTENT + "\n")
    (tmp_path / "c.toml").write_text(f'[chain]\nkey_file = "{tmp_path / "key"}"\n')
    result = check_config(audit_cli, "--config", str(tmp_path / "c.toml"), "--json", env={})
    assert_no_secret(result.stdout + result.stderr)
    doc = json.loads(result.stdout)
    assert doc["values"]["chain.key"] == "***" and doc["origin"]["chain.key"] == "file:chain.key_file"


def test_every_key_is_shown_with_its_origin(tmp_path: Path, audit_cli: str) -> None:
    (tmp_path / "c.toml").write_text('[batch]\nmax_spans = 64\n[source]\npath = "/from/file.jsonl"\n')
    result = check_config(
        audit_cli,
        "--config",
        str(tmp_path / "c.toml"),
        "--file",
        "/from/option.jsonl",
        "--json",
        env={"AUDIT_OTLP_LOG_LEVEL": "debug", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"},
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {k.name for k in KEYS} <= set(doc["values"])
    origin = doc["origin"]
    assert origin["batch.max_spans"] == "file" and doc["values"]["batch.max_spans"] == 64
    assert origin["source.path"] == "option" and doc["values"]["source.path"] == "/from/option.jsonl"
    assert origin["log.level"] == "env:AUDIT_OTLP_LOG_LEVEL"
    assert (
        origin["export.endpoint"] == "env:OTEL_EXPORTER_OTLP_ENDPOINT"
        and doc["values"]["export.endpoint"] == "http://otel:4318/v1/traces"
    )
    assert origin["batch.max_wait"] == "default"
    assert doc["config_file"] == str(tmp_path / "c.toml")

    text = check_config(audit_cli, "--config", str(tmp_path / "c.toml"), env={}).stdout
    assert any(line.startswith("batch.max_spans") and line.endswith("# file") for line in text.splitlines()), text


def test_invalid_configuration_exits_2_naming_the_key_without_the_secret(tmp_path: Path, audit_cli: str) -> None:
    (tmp_path / "c.toml").write_text("[batch]\nmax_spans = 0\n")
    result = check_config(audit_cli, "--config", str(tmp_path / "c.toml"), env={})
    assert result.returncode == 2 and "batch.max_spans" in result.stderr
    result = check_config(audit_cli, env={"OTEL_EXPORTER_OTLP_HEADERS": f"broken{HEADER_TOKEN}"})
    assert result.returncode == 2 and "export.headers" in result.stderr
    assert_no_secret(result.stderr)


def test_example_config_documents_every_key_and_is_valid_when_uncommented(tmp_path: Path) -> None:
    """config/audit-otlp.toml: each key of config.KEYS appears (commented) and the file parses."""
    import re

    from audit_otlp.config import load_config

    example = REPO / "config" / "audit-otlp.toml"
    text = example.read_text()
    uncommented, table = [], ""
    documented: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^# (\[[a-z_.]+\])$", line)
        if m:
            table = m.group(1)[1:-1]
            uncommented.append(m.group(1))
            continue
        m = re.match(r'^# ("?[a-z_.]+"?) = (.+)$', line)
        if m:
            name = m.group(1).strip('"')
            documented.add(f"{table}.{name}")
            uncommented.append(line[2:])
    for table_key in ("export.headers", "resource.attributes"):  # tables that are values
        documented = {k for k in documented if not k.startswith(table_key + ".")} | {table_key}
    assert {k.name for k in KEYS} <= documented, {k.name for k in KEYS} - documented
    key_file = tmp_path / "chain-key"
    key_file.write_text("k3y")
    body = "\n".join(uncommented).replace('"/etc/audit-otlp/chain-key"', f'"{key_file}"')
    (tmp_path / "all.toml").write_text(body)
    config = load_config(tmp_path / "all.toml", {}, {})
    assert config.batch.max_spans == 512 and config.health.listen == ("127.0.0.1", 9464)
