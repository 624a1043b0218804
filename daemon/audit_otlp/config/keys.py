"""Every configuration key, declared once: its TOML name, parser, default, environment variables,
and whether it is secret or reloadable. Validation, `check-config` provenance, error messages,
SIGHUP and the typed `Config` sections all come from this one table."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_SERVICE_NAME = "hydra.audit-trail"


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
        raise ValueError('a number of seconds or a string such as "200ms", "5s"')
    if isinstance(raw, (int, float)):
        seconds = float(raw)
    elif isinstance(raw, str) and (m := _DURATION_RE.match(raw)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError('a number of seconds or a string such as "200ms", "5s"')
    if seconds < 0:
        raise ValueError("a non-negative duration")
    return seconds


def parse_size(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError('a number of bytes or a string such as "1MiB"')
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and (m := _SIZE_RE.match(raw)):
        unit = m.group(2).lower() if m.group(2) else None
        value = int(m.group(1)) * _SIZE_UNITS[unit]
    else:
        raise ValueError('a number of bytes or a string such as "1MiB"')
    if value <= 0:
        raise ValueError("a positive number of bytes")
    return value


def _size_or_off(raw: Any) -> int | None:
    if raw == "off":
        return None
    try:
        return parse_size(raw)
    except ValueError:
        raise ValueError('a number of bytes, a string such as "8MiB", or "off"') from None


def _duration_or_off(raw: Any) -> float | None:
    if raw == "off":
        return None
    try:
        seconds = parse_duration(raw)
    except ValueError:
        raise ValueError('a duration such as "10s", or "off"') from None
    if seconds <= 0:
        raise ValueError('a positive duration such as "10s", or "off"')
    return seconds


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


def _path_patterns(raw: Any) -> list[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) and p for p in raw):
        raise ValueError('a list of paths or globs, such as ["state/audit.jsonl", "plugins/*/state/audit.jsonl"]')
    return list(dict.fromkeys(raw))


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


def parse_protocol(raw: Any) -> str:
    """OTLP/HTTP with a JSON or a protobuf body; the specification's third value, grpc, is not spoken."""
    value = raw.strip().lower() if isinstance(raw, str) else None
    if value in ("http/json", "http/protobuf"):
        return value
    if value == "grpc":
        raise ValueError("http/json or http/protobuf (grpc is not supported: audit-otlp sends OTLP/HTTP)")
    raise ValueError("http/json or http/protobuf")


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
    Key("source.paths", _path_patterns, None),  # None: [source.path]
    Key("source.start_at", _choice("beginning", "end"), "beginning"),
    Key("source.max_line_bytes", parse_size, 1024 * 1024),
    Key("source.rotated_glob", _string, None),  # None: "<path>.*"
    Key("source.poll_interval", parse_duration, 1.0),
    Key("source.rescan_interval", _duration_or_off, 10.0),  # globs in source.paths matched again
    Key("source.spool_max_bytes", parse_size, 1024**3),
    Key("checkpoint.path", _path, None, env=("AUDIT_OTLP_CHECKPOINT",)),  # None: see below
    Key("checkpoint.interval", parse_duration, 0.0),  # 0: group commit
    Key("export.endpoint", parse_endpoint, None),  # None: from OTEL env / vendor / default
    Key(
        "export.headers", parse_headers, {}, env=("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"), secret=True
    ),
    Key(
        "export.timeout",
        parse_duration,
        10.0,
        env=("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        env_parse=_timeout_ms,
    ),
    Key(
        "export.compression",
        _choice("gzip", "none"),
        "none",
        env=("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"),
    ),
    Key(
        "export.protocol",
        parse_protocol,
        "http/json",
        env=("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ),
    Key("export.max_in_flight", _int_range(1, 64), 4),
    Key(
        "export.certificate",
        _optional_path,
        None,
        env=("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
    ),
    Key(
        "export.client_certificate",
        _optional_path,
        None,
        env=("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
    ),
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
    # A lane maps in a helper process (the second core) while this much of its file is unread.
    Key("mapping.helper_min_backlog", _size_or_off, 8 * 1024 * 1024),
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
