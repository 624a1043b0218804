"""`audit-otlp health`: ask a running daemon's /healthz or /readyz (exit 0 healthy, 1 not): what a
container HEALTHCHECK runs."""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

from audit_otlp.config import Config
from audit_otlp.runtime.lifecycle import EXIT_OK, EXIT_USAGE


def main(args: argparse.Namespace, config: Config) -> int:
    listen = config.health.listen
    if not listen:
        print("audit-otlp health: no health.listen configured (set AUDIT_OTLP_HEALTH_LISTEN or --health-listen)", file=sys.stderr)
        return EXIT_USAGE
    host, port = listen
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{host}:{port}/{'readyz' if args.ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback, fixed path)
            print(response.read().decode())
            return EXIT_OK if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace"))
        return 1
    except OSError as exc:
        print(f"audit-otlp health: {url}: {exc}", file=sys.stderr)
        return 1
