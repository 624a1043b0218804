"""Vendor shortcuts: SENTRY_DSN and DD_API_KEY (+ DD_SITE) turned into an endpoint and headers.

A vendor credential is only ever attached to a request whose origin (scheme, host and port) is
that vendor's own (`VendorPreset.headers_for`), so a DSN or API key can never leak to an
arbitrary endpoint: not to an OTEL_EXPORTER_OTLP_ENDPOINT set beside it, not to another port of
the same host, and not through a redirect (the exporter does not follow redirects).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

_DD_SITE_RE = re.compile(r"^(?:[a-z0-9-]+\.)*(?:datadoghq\.com|datadoghq\.eu|ddog-gov\.com)$")


@dataclass(frozen=True)
class VendorPreset:
    name: str  # "sentry" or "datadog"
    env_name: str
    endpoint: str
    host: str  # the vendor's host (for logs); `headers` go only to `origin(endpoint)`
    headers: Mapping[str, str] = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False, default=())

    def matches(self, url: str) -> bool:
        """Is `url` on the vendor's own origin (same scheme, host and port as the preset endpoint)?"""
        return origin(url) == origin(self.endpoint)

    def headers_for(self, url: str) -> Mapping[str, str]:
        """The credential headers for a request to `url`: none unless it is the vendor's host."""
        return self.headers if self.matches(url) else {}


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, lower-case host, port with the scheme's default filled in); None if unparsable."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def sentry_from_dsn(dsn: str) -> VendorPreset:
    """https://<public_key>@<host>[/<prefix>]/<project_id> -> the project's OTLP traces URL."""
    parts = urllib.parse.urlsplit(dsn.strip())
    path = parts.path.rstrip("/")
    prefix, _, project_id = path.rpartition("/")
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.username or not project_id.isdigit():
        raise ValueError(
            "SENTRY_DSN: not a Sentry DSN; accepted: https://<public_key>@<host>/<project_id> (Project Settings > Client Keys)"
        )
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    endpoint = f"{parts.scheme}://{netloc}{prefix}/api/{project_id}/integration/otlp/v1/traces"
    key = parts.username
    return VendorPreset(
        name="sentry",
        env_name="SENTRY_DSN",
        endpoint=endpoint,
        host=parts.hostname.lower(),
        headers={"x-sentry-auth": f"sentry sentry_key={key}"},
        secrets=(key, dsn),
    )


def datadog(api_key: str, site: str | None) -> VendorPreset:
    site = (site or "datadoghq.com").strip().lower()
    if not _DD_SITE_RE.match(site):
        raise ValueError(
            f"DD_SITE: unknown Datadog site {site!r}; accepted: datadoghq.com, us3.datadoghq.com, "
            "us5.datadoghq.com, datadoghq.eu, ap1.datadoghq.com, ap2.datadoghq.com"
        )
    host = f"otlp.{site}"
    return VendorPreset(
        name="datadog",
        env_name="DD_API_KEY",
        endpoint=f"https://{host}/v1/traces",
        host=host,
        headers={"dd-api-key": api_key.strip(), "dd-otlp-source": "llmobs"},
        secrets=(api_key.strip(),),
    )


def presets(env: Mapping[str, str]) -> list[VendorPreset]:
    """Every preset the environment configures, Sentry first. Raises ValueError when malformed."""
    found: list[VendorPreset] = []
    if env.get("SENTRY_DSN"):
        found.append(sentry_from_dsn(env["SENTRY_DSN"]))
    if env.get("DD_API_KEY"):
        found.append(datadog(env["DD_API_KEY"], env.get("DD_SITE")))
    return found


def resolve(env: Mapping[str, str], endpoint: str | None = None) -> VendorPreset | None:
    """The preset to use. With an explicit `endpoint`: only the preset whose origin it is (so a
    credential never goes to another host); without: Sentry, else Datadog."""
    found = presets(env)
    if endpoint is not None:
        return next((p for p in found if p.matches(endpoint)), None)
    return found[0] if found else None
