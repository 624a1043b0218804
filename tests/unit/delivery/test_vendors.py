"""Sentry and Datadog presets, and the promise that a vendor credential only ever travels to
that vendor's own origin."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from audit_otlp.config import ConfigError, load_config
from audit_otlp.delivery import vendors
from audit_otlp.runtime.wiring import build_export_settings
from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector
from tests.helpers.daemon import daemon_env

DSN = "https://f00dfeedcafe4b1d@o4507.ingest.de.sentry.io/4508123"


def test_sentry_dsn_gives_the_otlp_traces_url_and_auth_header() -> None:
    preset = vendors.sentry_from_dsn(DSN)
    assert preset.endpoint == "https://o4507.ingest.de.sentry.io/api/4508123/integration/otlp/v1/traces"
    assert preset.headers == {"x-sentry-auth": "sentry sentry_key=f00dfeedcafe4b1d"}
    assert "f00dfeedcafe4b1d" in preset.secrets
    assert "f00dfeed" not in repr(preset)


def test_self_hosted_sentry_dsn_keeps_port_and_path_prefix() -> None:
    preset = vendors.sentry_from_dsn("http://pub:legacysecret@sentry.internal:9000/sentry/42")
    assert preset.endpoint == "http://sentry.internal:9000/sentry/api/42/integration/otlp/v1/traces"
    assert preset.headers["x-sentry-auth"] == "sentry sentry_key=pub"


@pytest.mark.parametrize(
    "dsn", ["not a dsn", "https://o1.ingest.sentry.io/42", "https://key@o1.ingest.sentry.io/abc", "ftp://k@h/1"]
)
def test_malformed_dsn_is_a_config_error_naming_the_variable(dsn: str) -> None:
    with pytest.raises(ConfigError, match="SENTRY_DSN"):
        load_config(env={"SENTRY_DSN": dsn})


@pytest.mark.parametrize(
    ("site", "endpoint"),
    [
        (None, "https://otlp.datadoghq.com/v1/traces"),
        ("datadoghq.eu", "https://otlp.datadoghq.eu/v1/traces"),
        ("us5.datadoghq.com", "https://otlp.us5.datadoghq.com/v1/traces"),
        ("ap1.datadoghq.com", "https://otlp.ap1.datadoghq.com/v1/traces"),
    ],
)
def test_datadog_preset(site: str | None, endpoint: str) -> None:
    env = {"DD_API_KEY": "0123456789abcdef0123456789abcdef"} | ({"DD_SITE": site} if site else {})
    config = load_config(env=env)
    assert config.export.endpoint == endpoint
    settings = build_export_settings(config)
    assert settings.vendor_headers == {"dd-api-key": "0123456789abcdef0123456789abcdef", "dd-otlp-source": "llmobs"}
    assert "0123456789abcdef0123456789abcdef" in config.secrets
    assert config.mapping.dd_llmobs_enabled is True


def test_unknown_datadog_site_is_rejected() -> None:
    with pytest.raises(ConfigError, match="DD_SITE"):
        load_config(env={"DD_API_KEY": "k" * 32, "DD_SITE": "evil.example.com"})


@pytest.mark.parametrize("endpoint_var", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_an_explicit_foreign_endpoint_gets_no_vendor_credential(endpoint_var: str) -> None:
    env = {"SENTRY_DSN": DSN, "DD_API_KEY": "d" * 32, endpoint_var: "http://collector.internal:4318"}
    config = load_config(env=env)
    assert config.vendor is None
    settings = build_export_settings(config)
    assert settings.vendor_headers == {}
    assert "f00dfeedcafe4b1d" in config.secrets and "d" * 32 in config.secrets  # still redacted from logs


def test_an_explicit_endpoint_on_the_vendor_origin_keeps_its_credential() -> None:
    env = {
        "SENTRY_DSN": DSN,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://o4507.ingest.de.sentry.io/api/4508123/integration/otlp/v1/traces/",
    }
    assert build_export_settings(load_config(env=env)).vendor_headers == {"x-sentry-auth": "sentry sentry_key=f00dfeedcafe4b1d"}
    # with both presets, the endpoint chooses which credential may go
    env = {
        "SENTRY_DSN": DSN,
        "DD_API_KEY": "d" * 32,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://otlp.datadoghq.com/v1/traces",
    }
    assert build_export_settings(load_config(env=env)).vendor_headers["dd-api-key"] == "d" * 32


@pytest.mark.parametrize(
    "url",
    [
        "https://o4507.ingest.de.sentry.io:8443/x",  # another port
        "http://o4507.ingest.de.sentry.io/x",  # plain http: another origin
        "https://o4507.ingest.de.sentry.io.evil.example/x",
        "https://evil.example/?o4507.ingest.de.sentry.io",
    ],
)
def test_origin_match_is_exact(url: str) -> None:
    preset = vendors.sentry_from_dsn(DSN)
    assert preset.headers_for(url) == {}
    assert preset.headers_for("https://O4507.ingest.de.sentry.io:443/api/1") == preset.headers


def _deliver_once(audit_cli: str, tmp: Path, env: dict[str, str], rows: int = 5) -> subprocess.CompletedProcess[str]:
    AuditWriter(tmp / "audit.jsonl").append(rows)
    return subprocess.run(
        [
            audit_cli,
            "run",
            "--once",
            "--deadline",
            "30",
            "--file",
            str(tmp / "audit.jsonl"),
            "--checkpoint",
            str(tmp / "cp.json"),
        ],
        env=daemon_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sentry_preset_end_to_end_sends_the_header_to_sentry_only(audit_cli: str, tmp_path: Path) -> None:
    """The DSN's host is a loopback 'Sentry'; the header and path come out as Sentry expects."""
    with Collector() as sentry:
        dsn = f"http://5ca1ab1e0ddba11@127.0.0.1:{sentry.port}/77"
        result = _deliver_once(audit_cli, tmp_path, {"SENTRY_DSN": dsn})
        assert result.returncode == 0, result.stderr
        assert len(sentry.accepted_spans()) == 5
        for req in sentry.requests:
            assert req.path == "/api/77/integration/otlp/v1/traces"
            assert req.headers["x-sentry-auth"] == "sentry sentry_key=5ca1ab1e0ddba11"
    assert "5ca1ab1e0ddba11" not in result.stderr + result.stdout


def test_vendor_credentials_never_reach_a_foreign_collector(audit_cli: str, tmp_path: Path) -> None:
    """SENTRY_DSN and DD_API_KEY set, OTEL_EXPORTER_OTLP_ENDPOINT points at our collector: it
    must see neither credential, while the 'Sentry' on another port of the same host sees nothing."""
    with Collector() as sentry, Collector() as foreign:
        env = {
            "SENTRY_DSN": f"http://5ca1ab1e0ddba11@127.0.0.1:{sentry.port}/77",
            "DD_API_KEY": "ddkey0123456789abcdef0123456789a",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{foreign.port}",
        }
        result = _deliver_once(audit_cli, tmp_path, env)
        assert result.returncode == 0, result.stderr
        assert len(foreign.accepted_spans()) == 5
        assert sentry.requests == []
        for req in foreign.requests:
            assert req.path == "/v1/traces"
            flat = repr(req.headers).lower()
            assert "x-sentry-auth" not in req.headers and "dd-api-key" not in req.headers
            assert "5ca1ab1e0ddba11" not in flat and "ddkey0123456789" not in flat
    assert "5ca1ab1e0ddba11" not in result.stderr and "ddkey0123456789" not in result.stderr
