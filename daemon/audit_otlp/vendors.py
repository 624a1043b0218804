"""Vendor shortcuts: SENTRY_DSN and DD_API_KEY (+ DD_SITE) turned into an endpoint and headers.

A vendor credential is only ever attached to a request whose host is that vendor's own host
(`VendorPreset.headers_for`), so a DSN or API key can never leak to an arbitrary endpoint.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Mapping

_DD_SITE_RE = re.compile(r"^(?:[a-z0-9-]+\.)*(?:datadoghq\.com|datadoghq\.eu|ddog-gov\.com)$")


@dataclass(frozen=True)
class VendorPreset:
    name: str  # "sentry" or "datadog"
    env_name: str
    endpoint: str
    host: str  # the only host that may receive `headers`
    headers: Mapping[str, str] = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False, default=())

    def matches(self, url: str) -> bool:
        return (urllib.parse.urlsplit(url).hostname or "").lower() == self.host

    def headers_for(self, url: str) -> Mapping[str, str]:
        """The credential headers for a request to `url`: none unless it is the vendor's host."""
        return self.headers if self.matches(url) else {}


def sentry_from_dsn(dsn: str) -> VendorPreset:
    """https://<public_key>@<host>[/<prefix>]/<project_id> -> the project's OTLP traces URL."""
    parts = urllib.parse.urlsplit(dsn.strip())
    path = parts.path.rstrip("/")
    prefix, _, project_id = path.rpartition("/")
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.username or not project_id.isdigit():
        raise ValueError(
            "SENTRY_DSN: not a Sentry DSN; accepted: https://<public_key>@<host>/<project_id> "
            "(Project Settings > Client Keys)"
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


def resolve(env: Mapping[str, str]) -> VendorPreset | None:
    """The vendor preset the environment asks for; Sentry wins when both are set."""
    if env.get("SENTRY_DSN"):
        return sentry_from_dsn(env["SENTRY_DSN"])
    if env.get("DD_API_KEY"):
        return datadog(env["DD_API_KEY"], env.get("DD_SITE"))
    return None
