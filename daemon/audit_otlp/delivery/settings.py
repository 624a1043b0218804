"""What delivery needs from the configuration, as one typed, immutable object (built in runtime)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExportSettings:
    endpoint: str
    headers: Mapping[str, str] = field(repr=False)
    vendor_headers: Mapping[str, str] = field(repr=False)  # already filtered to the vendor's own origin
    timeout: float = 10.0
    compression: str = "none"
    max_in_flight: int = 4
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    auth_backoff: float = 60.0
    certificate: str | None = None
    client_certificate: str | None = None
    client_key: str | None = None
    insecure: bool = False
    max_request_bytes: int = 64 * 1024 * 1024  # before compression, as the OTLP spec measures it
