"""Configuration: precedence, the OpenTelemetry environment rules, and errors that name the key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from audit_otlp.config import DEFAULT_ENDPOINT, ConfigError, load_config


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audit-otlp.toml"
    path.write_text(text)
    return path


def test_no_config_file_runs_on_embedded_defaults() -> None:
    config = load_config(None, {}, env={})
    assert config.export.endpoint == DEFAULT_ENDPOINT == "http://localhost:4318/v1/traces"
    assert config.source.path == Path("state/audit.jsonl")
    assert config.checkpoint.path == Path("state/audit-otlp.checkpoint.json")
    assert config.batch.max_spans == 512
    assert config.batch.max_bytes == 1024 * 1024
    assert config.batch.max_wait == pytest.approx(0.2)
    assert config.export.max_in_flight == 4
    assert config.export.timeout == 10.0
    assert config.source.rotated_glob == "state/audit.jsonl.*"
    assert config.dead_letter.path == Path("state/dead-letter.jsonl")
    assert all(origin == "default" for origin in config.origin.values())


def test_option_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, '[source]\npath = "from-file.jsonl"\nstart_at = "end"\n[batch]\nmax_wait = "50ms"\n')
    env = {"AUDIT_OTLP_FILE": "from-env.jsonl"}
    assert load_config(toml, {}, env).source.path == Path("from-env.jsonl")
    config = load_config(toml, {"file": "from-option.jsonl"}, env)
    assert config.source.path == Path("from-option.jsonl")
    assert config.origin["source.path"] == "option"
    assert config.source.start_at == "end" and config.origin["source.start_at"] == "file"
    assert config.batch.max_wait == pytest.approx(0.05)
    assert load_config(toml, {}, {}).origin["source.path"] == "file"


def test_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "[export]\nmax_in_flight = 2\n")
    assert load_config(None, {}, {"AUDIT_OTLP_CONFIG": str(toml)}).export.max_in_flight == 2


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "http://collector:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}, "http://collector:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example/prefix/"}, "https://c.example/prefix/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom"}, "http://c:4318/custom"),
        # A traces URL with no path posts to the root, as the spec says.
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318"}, "http://c:4318/"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://wins:2/x"},
            "http://wins:2/x",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, DEFAULT_ENDPOINT),  # empty means unset
    ],
)
def test_endpoint_follows_the_opentelemetry_rules(env: dict[str, str], expected: str) -> None:
    assert load_config(None, {}, env).export.endpoint == expected


def test_endpoint_option_and_file_beat_the_environment(tmp_path: Path) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318"}
    assert load_config(None, {"endpoint": "http://opt:1/v1/traces"}, env).export.endpoint == "http://opt:1/v1/traces"
    toml = write_toml(tmp_path, '[export]\nendpoint = "http://file:1/v1/traces"\n')
    assert load_config(toml, {}, env).export.endpoint == "http://file:1/v1/traces"


def test_headers_timeout_and_compression_from_the_environment() -> None:
    config = load_config(
        None,
        {},
        {
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=abc%3D%3D,X-Team = one",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-sentry-auth=sentry sentry_key=k123",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        },
    )
    assert config.export.headers == {"api-key": "abc==", "x-team": "one", "x-sentry-auth": "sentry sentry_key=k123"}
    assert config.export.timeout == pytest.approx(2.5)  # milliseconds, as the spec says
    assert config.export.compression == "gzip"


@pytest.mark.parametrize(
    ("env", "toml", "expected"),
    [
        ({}, "", "http/json"),  # the default
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "", "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, "", "http/protobuf"),
        (  # the signal-specific variable wins over the general one
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
            "",
            "http/protobuf",
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": ""}, "", "http/protobuf"),
        ({}, '[export]\nprotocol = "http/protobuf"\n', "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "HTTP/JSON"}, '[export]\nprotocol = "http/protobuf"\n', "http/json"),  # env > file
    ],
    ids=["default", "general_env", "traces_env", "traces_env_wins", "empty_traces_env_is_unset", "file", "env_beats_file"],
)
def test_protocol_from_file_and_environment(tmp_path: Path, env: dict[str, str], toml: str, expected: str) -> None:
    config = load_config(write_toml(tmp_path, toml) if toml else None, {}, env)
    assert config.export.protocol == expected


@pytest.mark.parametrize("value", ["grpc", "http", "protobuf", "http/xml"])
def test_an_unsupported_protocol_names_the_key_and_the_accepted_values(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {}, {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": value})
    message = str(err.value)
    assert "export.protocol" in message and "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" in message
    assert "http/json or http/protobuf" in message
    assert ("grpc is not supported" in message) == (value == "grpc")


def test_service_name_and_resource_attributes() -> None:
    config = load_config(
        None, {}, {"OTEL_SERVICE_NAME": "svc", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=sec"}
    )
    assert config.resource.service_name == "svc"
    assert config.resource.attributes == {"deployment.environment": "prod", "team": "sec"}
    assert load_config(None, {}, {}).resource.service_name == "hydra.audit-trail"


def test_checkpoint_defaults_to_the_systemd_state_directory() -> None:
    config = load_config(None, {}, {"STATE_DIRECTORY": "/var/lib/audit-otlp"})
    assert config.checkpoint.path == Path("/var/lib/audit-otlp/checkpoint.json")
    assert config.dead_letter.path == Path("/var/lib/audit-otlp/dead-letter.jsonl")


@pytest.mark.parametrize(
    ("toml", "key", "accepted"),
    [
        ('[source]\nstart_at = "middle"\n', "source.start_at", "beginning, end"),
        ("[batch]\nmax_spans = 0\n", "batch.max_spans", "integer from 1"),
        ('[batch]\nmax_wait = "soon"\n', "batch.max_wait", "200ms"),
        ('[export]\ncompression = "zstd"\n', "export.compression", "gzip, none"),
        ('[export]\nendpoint = "ftp://x"\n', "export.endpoint", "http"),
        ('[mapping]\ntrace_id_from = "row"\n', "mapping.trace_id_from", "prev_hash, session"),
        ('[health]\nlisten = "nope"\n', "health.listen", "HOST:PORT"),
        ("[chain]\nverify = 3\n", "chain.verify", "true or false"),
        ('[log]\nlevel = "loud"\n', "log.level", "debug"),
    ],
)
def test_invalid_values_name_the_key_and_the_accepted_values(tmp_path: Path, toml: str, key: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_toml(tmp_path, toml), {}, {})
    assert key in str(err.value) and accepted in str(err.value)


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch.max_spanz"):
        load_config(write_toml(tmp_path, "[batch]\nmax_spanz = 3\n"), {}, {})


def test_invalid_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_TIMEOUT"):
        load_config(None, {}, {"OTEL_EXPORTER_OTLP_TIMEOUT": "ten"})


def test_secrets_are_masked_in_the_effective_configuration() -> None:
    config = load_config(
        None,
        {"endpoint": "https://user:pw-secret@collector.example/v1/traces?token=tok-secret"},
        {"OTEL_EXPORTER_OTLP_HEADERS": "api-key=key-secret", "AUDIT_OTLP_CHAIN_KEY": "chain-secret"},
    )
    text = repr(config.masked())
    for secret in ("pw-secret", "tok-secret", "key-secret", "chain-secret"):
        assert secret not in text
        assert secret in config.secrets
    assert config.chain_key == b"chain-secret"


def test_cli_exits_2_on_invalid_configuration(tmp_path: Path, audit_cli: str) -> None:
    toml = write_toml(tmp_path, "[export]\nmax_in_flight = 1000\n")
    result = subprocess.run([audit_cli, "run", "--once", "--config", str(toml)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "export.max_in_flight" in result.stderr and "1 to 64" in result.stderr


def test_cli_usage_error_exits_2(audit_cli: str) -> None:
    result = subprocess.run([audit_cli, "run", "--no-such-option"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2


def test_service_name_from_resource_attributes_applies_when_otel_service_name_is_unset() -> None:
    from audit_otlp.runtime.wiring import build_envelope

    def service_name(env: dict[str, str]) -> str:
        head = build_envelope(load_config(None, {}, env)).head.decode()
        return head.split('"service.name","value":{"stringValue":"')[1].split('"')[0]

    assert service_name({}) == "hydra.audit-trail"
    assert service_name({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs"}) == "from-attrs"
    assert service_name({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs", "OTEL_SERVICE_NAME": "wins"}) == "wins"


def test_empty_chain_key_means_plain_sha256() -> None:
    assert load_config(None, {}, {"AUDIT_OTLP_CHAIN_KEY": ""}).chain_key is None


def test_every_key_is_a_field_of_its_typed_section() -> None:
    """The key table and the typed Config sections describe the same keys, one to one."""
    import dataclasses

    from audit_otlp.config import KEYS
    from audit_otlp.config.model import SECTION_TYPES

    fields = {f"{section}.{f.name}" for section, cls in SECTION_TYPES.items() for f in dataclasses.fields(cls)}
    assert fields == {key.name for key in KEYS}


def test_source_paths_default_to_the_one_path_and_an_explicit_file_wins(tmp_path: Path) -> None:
    assert load_config(None, {}, {}).source.paths == ["state/audit.jsonl"]
    config_file = tmp_path / "c.toml"
    config_file.write_text('[source]\npaths = ["a/audit.jsonl", "plugins/*/state/audit.jsonl"]\n')
    config = load_config(config_file, {}, {})
    assert config.source.paths == ["a/audit.jsonl", "plugins/*/state/audit.jsonl"] and config.source.path == Path("a/audit.jsonl")
    assert load_config(config_file, {"file": "only.jsonl"}, {}).source.paths == ["only.jsonl"]  # option > file
    assert load_config(config_file, {}, {"AUDIT_OTLP_FILE": "env.jsonl"}).source.paths == ["env.jsonl"]


@pytest.mark.parametrize(
    "text", ["paths = []", 'paths = "a.jsonl"', 'paths = ["a", ""]', 'paths = ["a", "b"]\nrotated_glob = "x.*"']
)
def test_bad_source_paths_name_the_key(tmp_path: Path, text: str) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text(f"[source]\n{text}\n")
    with pytest.raises(ConfigError, match=r"source\.(paths|rotated_glob)"):
        load_config(config_file, {}, {})


@pytest.mark.parametrize(
    ("text", "expected"), [("", 10.0), ('rescan_interval = "500ms"', 0.5), ('rescan_interval = "off"', None)]
)
def test_source_rescan_interval(tmp_path: Path, text: str, expected: float | None) -> None:
    assert load_config(write_toml(tmp_path, f"[source]\n{text}\n"), {}, {}).source.rescan_interval == expected


@pytest.mark.parametrize("value", ['"soon"', "0", "-1", "true"])
def test_bad_source_rescan_interval_names_the_key_and_the_accepted_values(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_toml(tmp_path, f"[source]\nrescan_interval = {value}\n"), {}, {})
    assert "source.rescan_interval" in str(caught.value) and '"off"' in str(caught.value)
