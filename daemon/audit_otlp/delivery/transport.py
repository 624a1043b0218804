"""One POST becomes one `Answer`: the httpx client, its TLS context and headers, nothing more.

The transport never retries and never judges an answer (that is `delivery.policy`); it turns
every way a request can end (a status, a timeout, a reset, a certificate that does not verify)
into a value, reads at most `RESPONSE_LIMIT` of a body, and never follows a redirect.
"""

from __future__ import annotations

import importlib.util
import logging
import ssl
import sys
import urllib.parse
from typing import NamedTuple

import httpx

from audit_otlp import __version__
from audit_otlp.config import ConfigError
from audit_otlp.delivery.encoding import CONTENT_TYPES, PROTOBUF
from audit_otlp.delivery.retry import parse_retry_after
from audit_otlp.delivery.settings import ExportSettings

log = logging.getLogger(__name__)

RESPONSE_LIMIT = 64 * 1024  # like the Collector: read at most this much of an answer


class Answer(NamedTuple):
    status: int | None  # None: no HTTP answer (connection error, timeout)
    body: bytes
    retry_after: float | None
    error: str  # why there was no answer
    tls_rejected: bool = False  # the server's certificate did not verify: a configuration problem
    content_type: str = ""  # of the answer's body: which decoder reads it


def build_ssl_context(settings: ExportSettings) -> ssl.SSLContext | bool:
    """Verified TLS by default (the CA bundle replaces the system store when given); mTLS with
    a client certificate and key; `insecure` is the only way to turn verification off."""
    if settings.insecure:
        return False
    try:
        context = ssl.create_default_context(cafile=settings.certificate)
        if settings.client_certificate and settings.client_key:
            context.load_cert_chain(settings.client_certificate, settings.client_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "export.certificate / export.client_certificate / export.client_key "
            f"(OTEL_EXPORTER_OTLP_*CERTIFICATE, *_CLIENT_KEY): cannot load: {getattr(exc, 'strerror', None) or exc}; "
            "accepted: readable PEM files"
        ) from None
    return context


class Transport:
    """The HTTP client for one endpoint: `start()`, then `post()` any number of times, `aclose()`."""

    def __init__(self, settings: ExportSettings) -> None:
        self.settings = settings
        self._verify = build_ssl_context(settings)  # fails at start-up, not at the first request
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        mark_sniffio_absent()
        protobuf = self.settings.protocol == PROTOBUF
        headers = {
            "Content-Type": CONTENT_TYPES[self.settings.protocol],
            "User-Agent": f"audit-otlp/{__version__} OTel-OTLP-Exporter-Python-{'Protobuf' if protobuf else 'JSON'}",
            **self.settings.headers,
            **self.settings.vendor_headers,
        }
        if self.settings.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        limits = httpx.Limits(max_connections=self.settings.max_in_flight, max_keepalive_connections=self.settings.max_in_flight)
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.settings.timeout or None),
            limits=limits,
            verify=self._verify,
            follow_redirects=False,  # a redirect must not carry credentials elsewhere
            trust_env=False,  # no proxy or CA variables other than the OTLP ones
        )
        parts = urllib.parse.urlsplit(self.settings.endpoint)
        if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
            log.warning("exporting over plain http to non-loopback host %s: spans travel unencrypted", parts.hostname)
        if parts.scheme == "https" and self.settings.insecure:
            log.warning("export.insecure is on: the certificate of %s is NOT verified", parts.hostname)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def post(self, body: bytes) -> Answer:
        """POST an (already encoded, maybe compressed) request body; every failure is an Answer."""
        assert self._client is not None, "start() first"
        response: httpx.Response | None = None
        try:
            async with self._client.stream("POST", self.settings.endpoint, content=body) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= RESPONSE_LIMIT:
                        break
                answer = Answer(
                    response.status_code,
                    b"".join(chunks)[:RESPONSE_LIMIT],
                    parse_retry_after(response.headers.get("retry-after")),
                    "",
                    content_type=response.headers.get("content-type", ""),
                )
            return answer  # the response is closed (its connection back in the pool) here
        except httpx.TimeoutException as exc:
            return Answer(None, b"", None, f"timeout ({type(exc).__name__})")
        except (httpx.HTTPError, OSError) as exc:  # OSError: ssl.SSLError can escape httpx unwrapped
            detail = str(exc)[:200] or type(exc).__name__
            return Answer(None, b"", None, f"{type(exc).__name__}: {detail}", tls_rejected=tls_trust_failure(exc))
        finally:
            if response is not None:
                _unlink(response)


def mark_sniffio_absent() -> None:
    """httpcore asks which async library runs with `import sniffio` for every lock and event it
    makes, several a request; without sniffio installed each is a failed import, a search of
    sys.path (~30 µs: 5% of the daemon's CPU in a catch-up, py-spy). A None entry in sys.modules
    makes that import fail at once; httpcore then takes asyncio, as it does anyway."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def _unlink(response: httpx.Response) -> None:
    """httpx links a sent response and its stream both ways (`response.stream` is a
    BoundAsyncStream holding the response): a reference cycle that keeps the request and its
    body (~1 MB) alive until the cycle collector runs, so RSS grows with the request rate. The
    stream is done with once read; replacing it ends the cycle and frees the body at once."""
    response.stream = httpx.ByteStream(b"")


def tls_trust_failure(exc: BaseException) -> bool:
    """Did a TLS handshake fail over certificates (ours or theirs)? That is configuration."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if isinstance(seen, ssl.SSLError) and any(w in str(seen).upper() for w in ("CERTIFICATE", "UNKNOWN_CA")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.") or host.endswith(".localhost")
