"""The effective configuration as one typed object: a frozen section per TOML table, each field a
key of `keys.KEYS` (a test holds the two in step), plus where every value came from."""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit_otlp.delivery.vendors import VendorPreset


@dataclass(frozen=True)
class SourceSection:
    path: Path
    paths: list[str]  # paths and globs (default: [path]); see `source_paths`
    start_at: str
    max_line_bytes: int
    rotated_glob: str
    poll_interval: float
    spool_max_bytes: int
    rescan_interval: float | None  # how often globs in `paths` are matched again (None: start-up only)


@dataclass(frozen=True)
class CheckpointSection:
    path: Path
    interval: float


@dataclass(frozen=True)
class ExportSection:
    endpoint: str
    headers: Mapping[str, str] = field(repr=False)
    timeout: float
    compression: str
    protocol: str
    max_in_flight: int
    certificate: Path | None
    client_certificate: Path | None
    client_key: Path | None
    insecure: bool
    max_request_bytes: int


@dataclass(frozen=True)
class BatchSection:
    max_spans: int
    max_bytes: int
    max_wait: float


@dataclass(frozen=True)
class RetrySection:
    initial_backoff: float
    max_backoff: float
    auth_backoff: float


@dataclass(frozen=True)
class DeadLetterSection:
    path: Path


@dataclass(frozen=True)
class DeliverySection:
    receipts_path: Path | None


@dataclass(frozen=True)
class ChainSection:
    verify: bool
    key_file: Path | None


@dataclass(frozen=True)
class MappingSection:
    trace_id_from: str
    dd_llmobs_enabled: bool
    helper_min_backlog: int | None  # None: "off", the daemon maps every line itself


@dataclass(frozen=True)
class ResourceSection:
    service_name: str
    attributes: Mapping[str, str]


@dataclass(frozen=True)
class HealthSection:
    listen: tuple[str, int] | None
    failing_after: float


@dataclass(frozen=True)
class ShutdownSection:
    grace_period: float


@dataclass(frozen=True)
class LogSection:
    format: str
    level: str


# TOML table -> its section type (a test checks every key of keys.KEYS has a field here).
SECTION_TYPES: dict[str, type[Any]] = {
    "source": SourceSection,
    "checkpoint": CheckpointSection,
    "export": ExportSection,
    "batch": BatchSection,
    "retry": RetrySection,
    "dead_letter": DeadLetterSection,
    "delivery": DeliverySection,
    "chain": ChainSection,
    "mapping": MappingSection,
    "resource": ResourceSection,
    "health": HealthSection,
    "shutdown": ShutdownSection,
    "log": LogSection,
}


def _section(name: str, values: Mapping[str, Any]) -> Any:
    cls = SECTION_TYPES[name]
    return cls(**{f.name: values[f"{name}.{f.name}"] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Config:
    """The effective configuration. Code reads the typed sections (`config.batch.max_spans`);
    `values` (every key by its dotted name) and `origin` (where each came from) serve
    `check-config`, SIGHUP's comparison and masking."""

    values: Mapping[str, Any]
    origin: Mapping[str, str]
    chain_key: bytes | None = field(default=None, repr=False)
    vendor: VendorPreset | None = field(default=None, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    config_file: Path | None = None
    chain_key_source: str = "none"  # where the chain key came from (config/chain_key.py), never the key
    chain_key_problem: str | None = None  # a key that exists but cannot be used: said at start-up
    source: SourceSection = field(init=False, repr=False)
    checkpoint: CheckpointSection = field(init=False, repr=False)
    export: ExportSection = field(init=False, repr=False)
    batch: BatchSection = field(init=False, repr=False)
    retry: RetrySection = field(init=False, repr=False)
    dead_letter: DeadLetterSection = field(init=False, repr=False)
    delivery: DeliverySection = field(init=False, repr=False)
    chain: ChainSection = field(init=False, repr=False)
    mapping: MappingSection = field(init=False, repr=False)
    resource: ResourceSection = field(init=False, repr=False)
    health: HealthSection = field(init=False, repr=False)
    shutdown: ShutdownSection = field(init=False, repr=False)
    log: LogSection = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in SECTION_TYPES:
            object.__setattr__(self, name, _section(name, self.values))

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
        out["chain.key_source"] = self.chain_key_source
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
