"""Turn defaults, a TOML file, the environment and command-line options into one typed Config.

Precedence: option > environment > file > default. Every key is declared once in KEYS with its
parser, so validation, `check-config` provenance and error messages come from one table.
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from audit_otlp.delivery import vendors

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_SERVICE_NAME = "hydra.audit-trail"
SERVICE_NAMESPACE = "enchanter"


class ConfigError(Exception):
    """An invalid configuration; the message names the key and the accepted values."""


# ---------------------------------------------------------------------------------------------
# Value parsers: each takes the raw value (from TOML, env or CLI) and returns the typed value or
# raises ValueError with a description of what is accepted.

_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}
_DURATION_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


def parse_duration(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("a number of seconds or a string such as \"200ms\", \"5s\"")
    if isinstance(raw, (int, float)):
        seconds = float(raw)
    elif isinstance(raw, str) and (m := _DURATION_RE.match(raw)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError("a number of seconds or a string such as \"200ms\", \"5s\"")
    if seconds < 0:
        raise ValueError("a non-negative duration")
    return seconds


def parse_size(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("a number of bytes or a string such as \"1MiB\"")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and (m := _SIZE_RE.match(raw)):
        unit = m.group(2).lower() if m.group(2) else None
        value = int(m.group(1)) * _SIZE_UNITS[unit]
    else:
        raise ValueError("a number of bytes or a string such as \"1MiB\"")
    if value <= 0:
        raise ValueError("a positive number of bytes")
    return value


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = int(raw) if isinstance(raw, (int, str)) else None
        except ValueError:
            value = None
        if value is None or not (low <= value <= high):
            raise ValueError(f"an integer from {low} to {high}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        if isinstance(raw, str) and raw.strip().lower() in choices:
            return raw.strip().lower()
        raise ValueError("one of " + ", ".join(choices))

    return parse


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError("true or false")


def _string(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValueError("a non-empty string")
    return raw


def _optional_path(raw: Any) -> Path | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise ValueError("a file path")
    return Path(raw)


def _path(raw: Any) -> Path:
    if not isinstance(raw, str) or not raw:
        raise ValueError("a file path")
    return Path(raw)


def parse_endpoint(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("an http:// or https:// URL")
    parts = urllib.parse.urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL")
    if not parts.path:  # the spec: a URL with no path posts to the root
        return urllib.parse.urlunsplit(parts._replace(path="/"))
    return raw.strip()


def parse_listen(raw: Any) -> tuple[str, int] | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        host, sep, port = raw.rpartition(":")
        if sep and port.isdigit() and 0 <= int(port) <= 65535:
            return (host.strip("[]") or "0.0.0.0", int(port))
    raise ValueError("HOST:PORT, for example 127.0.0.1:9464")


def parse_headers(raw: Any) -> dict[str, str]:
    """A TOML table of strings, or the W3C-baggage form of OTEL_EXPORTER_OTLP_HEADERS."""
    if isinstance(raw, dict):
        if all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            return {k.strip().lower(): v for k, v in raw.items()}
        raise ValueError("a table of header names to string values")
    if isinstance(raw, str):
        headers: dict[str, str] = {}
        for entry in raw.split(","):
            if not entry.strip():
                continue
            name, sep, value = entry.partition("=")
            if not sep or not name.strip():
                raise ValueError("key=value pairs separated by commas, e.g. api-key=abc,x-team=1")
            headers[urllib.parse.unquote(name).strip().lower()] = urllib.parse.unquote(value).strip()
        return headers
    raise ValueError("a table of header names to string values")


def parse_resource_attributes(raw: Any) -> dict[str, str]:
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    if isinstance(raw, str):
        attrs: dict[str, str] = {}
        for entry in raw.split(","):
            if not entry.strip():
                continue
            name, sep, value = entry.partition("=")
            if not sep or not name.strip():
                raise ValueError("key=value pairs separated by commas")
            attrs[urllib.parse.unquote(name).strip()] = urllib.parse.unquote(value).strip()
        return attrs
    raise ValueError("key=value pairs separated by commas")


def _timeout_ms(raw: Any) -> float:
    """OTEL_EXPORTER_OTLP_TIMEOUT is an integer of milliseconds (spec), 0 meaning no limit."""
    try:
        ms = int(str(raw).strip())
    except ValueError:
        raise ValueError("an integer number of milliseconds") from None
    if ms < 0:
        raise ValueError("a non-negative integer number of milliseconds")
    return ms / 1000.0


# ---------------------------------------------------------------------------------------------
# The key table.


@dataclass(frozen=True)
class Key:
    name: str  # dotted TOML name
    parse: Callable[[Any], Any]
    default: Any
    env: tuple[str, ...] = ()  # first one present wins
    env_parse: Callable[[Any], Any] | None = None  # when env values use another syntax
    secret: bool = False
    reloadable: bool = False  # SIGHUP may change it


KEYS: tuple[Key, ...] = (
    Key("source.path", _path, Path("state/audit.jsonl"), env=("AUDIT_OTLP_FILE",)),
    Key("source.start_at", _choice("beginning", "end"), "beginning"),
    Key("source.max_line_bytes", parse_size, 1024 * 1024),
    Key("source.rotated_glob", _string, None),  # None: "<path>.*"
    Key("source.poll_interval", parse_duration, 1.0),
    Key("checkpoint.path", _path, None, env=("AUDIT_OTLP_CHECKPOINT",)),  # None: see below
    Key("checkpoint.interval", parse_duration, 0.25),
    Key("export.endpoint", parse_endpoint, None),  # None: from OTEL env / vendor / default
    Key("export.headers", parse_headers, {}, env=("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"), secret=True),
    Key("export.timeout", parse_duration, 10.0, env=("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), env_parse=_timeout_ms),
    Key("export.compression", _choice("gzip", "none"), "none", env=("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")),
    Key("export.max_in_flight", _int_range(1, 64), 4),
    Key("export.certificate", _optional_path, None, env=("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")),
    Key("export.client_certificate", _optional_path, None, env=("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")),
    Key("export.client_key", _optional_path, None, env=("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY")),
    Key("export.insecure", parse_bool, False),
    Key("export.max_request_bytes", parse_size, 64 * 1024 * 1024),
    Key("batch.max_spans", _int_range(1, 100_000), 512, reloadable=True),
    Key("batch.max_bytes", parse_size, 1024 * 1024, reloadable=True),
    Key("batch.max_wait", parse_duration, 0.2, reloadable=True),
    Key("retry.initial_backoff", parse_duration, 0.5, reloadable=True),
    Key("retry.max_backoff", parse_duration, 30.0, reloadable=True),
    Key("retry.auth_backoff", parse_duration, 60.0, reloadable=True),
    Key("dead_letter.path", _path, None),  # None: beside the checkpoint
    Key("delivery.receipts_path", _optional_path, None),
    Key("chain.verify", parse_bool, True),
    Key("chain.key_file", _optional_path, None),
    Key("mapping.trace_id_from", _choice("prev_hash", "session"), "prev_hash"),
    Key("mapping.dd_llmobs_enabled", parse_bool, True),
    Key("resource.service_name", _string, DEFAULT_SERVICE_NAME, env=("OTEL_SERVICE_NAME",)),
    Key("resource.attributes", parse_resource_attributes, {}, env=("OTEL_RESOURCE_ATTRIBUTES",)),
    Key("health.listen", parse_listen, None, env=("AUDIT_OTLP_HEALTH_LISTEN",)),
    Key("health.failing_after", parse_duration, 60.0),
    Key("shutdown.grace_period", parse_duration, 5.0),
    Key("log.format", _choice("text", "json"), "text", env=("AUDIT_OTLP_LOG_FORMAT",), reloadable=True),
    Key("log.level", _choice("debug", "info", "warning", "error"), "info", env=("AUDIT_OTLP_LOG_LEVEL",), reloadable=True),
)
KEYS_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}

# Command-line options of `run` that map onto keys.
OPTION_KEYS: dict[str, str] = {
    "file": "source.path",
    "checkpoint": "checkpoint.path",
    "endpoint": "export.endpoint",
    "health_listen": "health.listen",
    "log_format": "log.format",
}


@dataclass(frozen=True)
class Config:
    """The effective configuration; `values` holds every key, `origin` where each came from."""

    values: Mapping[str, Any]
    origin: Mapping[str, str]
    chain_key: bytes | None = field(default=None, repr=False)
    vendor: vendors.VendorPreset | None = field(default=None, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    config_file: Path | None = None

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    # Frequently used, named for readability at call sites.
    @property
    def source_path(self) -> Path:
        return self.values["source.path"]

    @property
    def checkpoint_path(self) -> Path:
        return self.values["checkpoint.path"]

    @property
    def endpoint(self) -> str:
        return self.values["export.endpoint"]

    def with_values(self, **changes: Any) -> "Config":
        values = dict(self.values)
        values.update({k.replace("__", "."): v for k, v in changes.items()})
        return Config(values, self.origin, self.chain_key, self.vendor, self.secrets, self.config_file)

    def masked(self) -> dict[str, Any]:
        """Every key with secrets masked: for check-config, status and logs."""
        out: dict[str, Any] = {}
        for name, value in self.values.items():
            if name == "export.headers":
                out[name] = {h: "***" for h in value}
            elif name == "export.endpoint":
                out[name] = mask_url(value)
            elif isinstance(value, Path):
                out[name] = str(value)
            elif isinstance(value, tuple):
                out[name] = f"{value[0]}:{value[1]}"
            else:
                out[name] = value
        out["chain.key"] = "***" if self.chain_key else None
        if self.vendor:
            out["vendor"] = self.vendor.name
        return out


def mask_url(url: str) -> str:
    """Drop userinfo and query values from a URL before showing it."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = "&".join(f"{k}=***" for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        # Tables that are values in their own right (headers, attributes) are kept whole.
        if isinstance(value, dict) and name not in ("export.headers", "resource.attributes"):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _apply(key: Key, raw: Any, where: str, from_env: bool = False) -> Any:
    parser = key.env_parse if (from_env and key.env_parse) else key.parse
    try:
        return parser(raw)
    except ValueError as exc:
        shown = "***" if key.secret else repr(raw)
        raise ConfigError(f"{where}: invalid value {shown} for {key.name}; accepted: {exc}") from None


def default_checkpoint_path(env: Mapping[str, str]) -> Path:
    state_dir = env.get("STATE_DIRECTORY")
    if state_dir:
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(state_dir.split(":")[0]) / "checkpoint.json"
    return Path("state/audit-otlp.checkpoint.json")


def load_config(
    config_path: str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective configuration. Raises ConfigError (exit 2) on any invalid input."""
    env = dict(os.environ if env is None else env)
    env = {k: v for k, v in env.items() if v != ""}  # an empty variable counts as unset (OTel spec)
    options = {k: v for k, v in (options or {}).items() if v is not None}

    file_values: dict[str, Any] = {}
    if config_path is None and env.get("AUDIT_OTLP_CONFIG"):
        config_path = env["AUDIT_OTLP_CONFIG"]
    config_file = Path(config_path) if config_path else None
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                file_values = _flatten(tomllib.load(fh))
        except FileNotFoundError:
            raise ConfigError(f"--config: file not found: {config_file}") from None
        except PermissionError:
            raise ConfigError(f"--config: not readable: {config_file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: not valid TOML: {exc}") from None
        unknown = sorted(set(file_values) - set(KEYS_BY_NAME) - {"chain.key"})
        if unknown:
            raise ConfigError(
                f"{config_file}: unknown key {unknown[0]!r}; accepted keys: " + ", ".join(KEYS_BY_NAME)
            )
        if "chain.key" in file_values:
            raise ConfigError(
                f"{config_file}: chain.key may not be written in the config file; "
                "accepted: chain.key_file or the AUDIT_OTLP_CHAIN_KEY environment variable"
            )

    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key in KEYS:
        value, where = key.default, "default"
        if key.name in file_values:
            value, where = _apply(key, file_values[key.name], str(config_file)), "file"
        env_name = next((e for e in key.env if e in env), None)
        if env_name is not None:
            value, where = _apply(key, env[env_name], env_name, from_env=True), f"env:{env_name}"
        option = next((o for o, k in OPTION_KEYS.items() if k == key.name and o in options), None)
        if option is not None:
            value, where = _apply(key, options[option], "--" + option.replace("_", "-")), "option"
        values[key.name] = value
        origin[key.name] = where

    # Header variables: the traces-specific one overrides entries of the general one.
    if "OTEL_EXPORTER_OTLP_HEADERS" in env and "OTEL_EXPORTER_OTLP_TRACES_HEADERS" in env:
        merged = _apply(KEYS_BY_NAME["export.headers"], env["OTEL_EXPORTER_OTLP_HEADERS"], "OTEL_EXPORTER_OTLP_HEADERS", True)
        merged.update(values["export.headers"])
        values["export.headers"] = merged

    # Endpoint: option > file > OTEL traces endpoint (as is) > OTEL base + /v1/traces > vendor > default.
    explicit_endpoint = origin["export.endpoint"] != "default"
    if not explicit_endpoint and "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in env:
        values["export.endpoint"] = _apply(
            KEYS_BY_NAME["export.endpoint"], env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"], "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", True
        )
        origin["export.endpoint"] = "env:OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        explicit_endpoint = True
    elif not explicit_endpoint and "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
        base = env["OTEL_EXPORTER_OTLP_ENDPOINT"].strip()
        values["export.endpoint"] = _apply(
            KEYS_BY_NAME["export.endpoint"], base.rstrip("/") + "/v1/traces", "OTEL_EXPORTER_OTLP_ENDPOINT", True
        )
        origin["export.endpoint"] = "env:OTEL_EXPORTER_OTLP_ENDPOINT"
        explicit_endpoint = True

    try:
        vendor = vendors.resolve(env, values["export.endpoint"] if explicit_endpoint else None)
        vendor_secrets = [secret for preset in vendors.presets(env) for secret in preset.secrets]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if vendor is not None and not explicit_endpoint:
        values["export.endpoint"] = vendor.endpoint
        origin["export.endpoint"] = f"env:{vendor.env_name}"
    if values["export.endpoint"] is None:
        values["export.endpoint"] = DEFAULT_ENDPOINT

    if values["source.rotated_glob"] is None:
        values["source.rotated_glob"] = str(values["source.path"]) + ".*"
    if values["checkpoint.path"] is None:
        values["checkpoint.path"] = default_checkpoint_path(env)
        origin["checkpoint.path"] = "env:STATE_DIRECTORY" if env.get("STATE_DIRECTORY") else "default"
    if values["dead_letter.path"] is None:
        values["dead_letter.path"] = values["checkpoint.path"].parent / "dead-letter.jsonl"
    if values["retry.max_backoff"] < values["retry.initial_backoff"]:
        raise ConfigError(
            "retry.max_backoff: must be at least retry.initial_backoff "
            f"({values['retry.initial_backoff']} s); accepted: a duration >= retry.initial_backoff"
        )
    if values["retry.initial_backoff"] <= 0:
        raise ConfigError("retry.initial_backoff: must be greater than 0; accepted: a positive duration such as \"500ms\"")
    if (values["export.client_certificate"] is None) != (values["export.client_key"] is None):
        raise ConfigError(
            "export.client_certificate / export.client_key: give both or neither "
            "(OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY)"
        )

    chain_key: bytes | None = None
    if "AUDIT_OTLP_CHAIN_KEY" in env:
        chain_key = env["AUDIT_OTLP_CHAIN_KEY"].encode("utf-8")
    elif values["chain.key_file"] is not None:
        try:
            chain_key = values["chain.key_file"].read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigError(f"chain.key_file: cannot read {values['chain.key_file']}: {exc.strerror}") from None
        if not chain_key:
            raise ConfigError("chain.key_file: the key file is empty; accepted: a file holding the HMAC key")

    secrets = [v for v in values["export.headers"].values() if v]
    secrets.extend(vendor_secrets)  # redacted even when the preset is not used
    if chain_key:
        secrets.append(chain_key.decode("utf-8", "replace"))
    parts = urllib.parse.urlsplit(values["export.endpoint"])
    if parts.password:
        secrets.append(parts.password)
    if parts.username:
        secrets.append(parts.username)
    for _, qv in urllib.parse.parse_qsl(parts.query):
        if qv:
            secrets.append(qv)

    return Config(
        values=values,
        origin=origin,
        chain_key=chain_key,
        vendor=vendor if (vendor is not None and not explicit_endpoint) or (vendor is not None and vendor.matches(values["export.endpoint"])) else None,
        secrets=tuple(s for s in secrets if len(s) >= 4),
        config_file=config_file,
    )
