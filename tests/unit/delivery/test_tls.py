"""TLS against a real HTTPS collector on 127.0.0.1 whose CA is made here: verified by default,
CA bundle and mTLS client certificate from the standard OTEL variables, `insecure` only when asked."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from audit_otlp.config import ConfigError, load_config
from audit_otlp.delivery.policy import Exporter
from audit_otlp.delivery.records import DurableLog
from audit_otlp.runtime.wiring import build_export_settings
from tests.helpers.auditgen import AuditWriter
from tests.helpers.collector import Collector
from tests.helpers.daemon import daemon_env
from tests.helpers.delivery import ENVELOPE, make_batch, metrics_and_state


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str, issuer_key: ec.EllipticCurvePrivateKey | None, issuer: x509.Name | None, *, ca: bool, server: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False,
            )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = _issue("audit-otlp test CA", None, None, ca=True)
    server, server_key = _issue("127.0.0.1", ca_key, ca.subject, ca=False, server=True)
    client, client_key = _issue("audit-otlp client", ca_key, ca.subject, ca=False)
    other_ca, _ = _issue("some other CA", None, None, ca=True)
    _write(d / "ca.pem", ca)
    _write(d / "server.pem", server, server_key)
    _write(d / "client.pem", client, client_key)
    _write(d / "other-ca.pem", other_ca)
    return d


class TlsCollector(Collector):
    def __init__(self, pki: Path, require_client_cert: bool = False) -> None:
        super().__init__()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki / "server.pem", pki / "server.key")
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(pki / "ca.pem")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.endpoint = self.endpoint.replace("http://", "https://")


@pytest.fixture
def tls_collector(pki: Path) -> Iterator[TlsCollector]:
    with TlsCollector(pki) as c:
        yield c


@pytest.fixture
def mtls_collector(pki: Path) -> Iterator[TlsCollector]:
    with TlsCollector(pki, require_client_cert=True) as c:
        yield c


async def _attempt(tmp: Path, env: dict[str, str], config_text: str = "") -> tuple[int, list[float], Exporter]:
    """Deliver 3 spans with the configuration `env` gives; stop after 3 failed attempts."""
    config_file = tmp / "tls.toml"
    config_file.write_text(config_text)
    config = load_config(config_file, env=env)
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)
        if len(sleeps) >= 3:
            raise TimeoutError("gave up")

    exporter = Exporter(build_export_settings(config), ENVELOPE, *metrics_and_state(), DurableLog(tmp / "dl.jsonl"), sleep=sleep)
    await exporter.start()
    try:
        outcome = await exporter.deliver(make_batch(tmp, 3))
        delivered = outcome.delivered
    except TimeoutError:
        delivered = 0
    finally:
        await exporter.aclose()
    return delivered, sleeps, exporter


async def test_ca_bundle_from_otel_certificate_verifies_the_server(
    tmp_path: Path, pki: Path, tls_collector: TlsCollector
) -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": tls_collector.endpoint, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki / "ca.pem")}
    delivered, _, _ = await _attempt(tmp_path, env)
    assert delivered == 3 and len(tls_collector.accepted_spans()) == 3


async def test_unverifiable_server_is_a_loud_config_problem_never_a_silent_send(
    tmp_path: Path, pki: Path, tls_collector: TlsCollector, caplog: pytest.LogCaptureFixture
) -> None:
    for ca in (None, pki / "other-ca.pem"):  # the system store, then a CA that did not sign it
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": tls_collector.endpoint} | (
            {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca)} if ca else {}
        )
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            delivered, sleeps, _ = await _attempt(tmp_path, env, '[retry]\nauth_backoff = "7s"\n')
        assert delivered == 0 and tls_collector.requests == []
        assert sleeps[:2] == [7.0, 7.0]  # the long configuration backoff
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text and f"127.0.0.1:{tls_collector.port}" in caplog.text


async def test_insecure_switch_is_the_only_way_to_skip_verification(
    tmp_path: Path, tls_collector: TlsCollector, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": tls_collector.endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    delivered, _, _ = await _attempt(tmp_path, env)
    assert delivered == 0, "OTEL_EXPORTER_OTLP_INSECURE is gRPC-only and must not disable verification"
    with caplog.at_level(logging.WARNING):
        delivered, _, _ = await _attempt(tmp_path, env, "[export]\ninsecure = true\n")
    assert delivered == 3
    assert "NOT verified" in caplog.text


async def test_mtls_client_certificate_from_otel_variables(tmp_path: Path, pki: Path, mtls_collector: TlsCollector) -> None:
    base = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": mtls_collector.endpoint, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki / "ca.pem")}
    delivered, _, _ = await _attempt(tmp_path, base)
    assert delivered == 0, "the server requires a client certificate"
    env = base | {
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki / "client.pem"),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki / "client.key"),
    }
    delivered, _, _ = await _attempt(tmp_path, env)
    assert delivered == 3 and len(mtls_collector.accepted_spans()) == 3


def test_unreadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    config = load_config(env={"OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match="export.certificate"):
        Exporter(build_export_settings(config), ENVELOPE, *metrics_and_state(), DurableLog(tmp_path / "dl"))


def test_daemon_delivers_over_mtls_with_the_standard_variables(
    audit_cli: str, tmp_path: Path, pki: Path, mtls_collector: TlsCollector
) -> None:
    AuditWriter(tmp_path / "audit.jsonl").append(7)
    env = daemon_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"https://127.0.0.1:{mtls_collector.port}",
        OTEL_EXPORTER_OTLP_CERTIFICATE=str(pki / "ca.pem"),
        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE=str(pki / "client.pem"),
        OTEL_EXPORTER_OTLP_CLIENT_KEY=str(pki / "client.key"),
    )
    result = subprocess.run(
        [
            audit_cli,
            "run",
            "--once",
            "--deadline",
            "30",
            "--file",
            str(tmp_path / "audit.jsonl"),
            "--checkpoint",
            str(tmp_path / "cp.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(mtls_collector.accepted_spans()) == 7


def test_daemon_exits_2_on_a_missing_ca_file(audit_cli: str, tmp_path: Path) -> None:
    env = daemon_env(OTEL_EXPORTER_OTLP_CERTIFICATE=str(tmp_path / "nope.pem"))
    result = subprocess.run(
        [audit_cli, "run", "--once", "--file", str(tmp_path / "a.jsonl"), "--checkpoint", str(tmp_path / "cp.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "export.certificate" in result.stderr
