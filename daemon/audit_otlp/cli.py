"""The command line: parse arguments, load the configuration, call the command. Nothing else."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from audit_otlp import __version__, commands
from audit_otlp.config import ConfigError, load_config
from audit_otlp.runtime.lifecycle import EXIT_FATAL, EXIT_OK, EXIT_USAGE, FatalError

log = logging.getLogger("audit_otlp")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="TOML configuration file (env AUDIT_OTLP_CONFIG)")
    p.add_argument("--file", metavar="PATH", help="the audit log to follow (env AUDIT_OTLP_FILE)")
    p.add_argument("--checkpoint", metavar="PATH", help="the checkpoint file (env AUDIT_OTLP_CHECKPOINT)")
    p.add_argument("--endpoint", metavar="URL", help="full OTLP/HTTP traces URL, used as is")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="audit-otlp", description="Ship a hash-chained audit.jsonl to OpenTelemetry backends as OTLP/JSON spans."
    )
    parser.add_argument("--version", action="version", version=f"audit-otlp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="follow the audit log and deliver spans (the daemon)")
    _add_source_options(run)
    run.add_argument("--once", action="store_true", help="deliver everything up to the end of the file, then exit")
    run.add_argument("--deadline", metavar="SECONDS", help="with --once: give up after this long (exit 1)")
    run.add_argument(
        "--dry-run", action="store_true", help="print OTLP/JSON requests to stdout; post nothing, write no checkpoint"
    )
    run.add_argument("--foreground", action="store_true", help="for a person at a terminal: readable logs and a progress line")
    run.add_argument("-v", "--verbose", action="store_true", help="log each request's outcome (status, spans, latency)")
    run.add_argument(
        "--health-listen", metavar="HOST:PORT", help="serve /healthz, /readyz, /metrics (env AUDIT_OTLP_HEALTH_LISTEN)"
    )
    run.add_argument("--log-format", choices=("text", "json"), help="log format (env AUDIT_OTLP_LOG_FORMAT)")

    export = sub.add_parser("export", help="print a whole file as OTLP/JSON export requests, one per line")
    export.add_argument("path", metavar="FILE")
    export.add_argument("--config", metavar="PATH")

    status = sub.add_parser("status", help="checkpoint position, backlog, last 2xx, chain state")
    _add_source_options(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    verify = sub.add_parser("verify", help="walk the hash chain of one or more files (in rotation order)")
    verify.add_argument("paths", metavar="FILE", nargs="+")
    verify.add_argument("--config", metavar="PATH")
    verify.add_argument("--json", action="store_true", help="machine-readable report")

    check = sub.add_parser("check-config", help="print the effective configuration, secrets masked")
    _add_source_options(check)
    check.add_argument("--health-listen", metavar="HOST:PORT")
    check.add_argument("--log-format", choices=("text", "json"))
    check.add_argument("--json", action="store_true")

    health = sub.add_parser("health", help="ask a running daemon's /healthz (exit 0 healthy, 1 not)")
    health.add_argument("--config", metavar="PATH")
    health.add_argument("--health-listen", metavar="HOST:PORT", help="where the daemon serves health (default: from config)")
    health.add_argument("--ready", action="store_true", help="ask /readyz instead")
    return parser


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in ("file", "checkpoint", "endpoint", "health_listen", "log_format")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(getattr(args, "config", None), _options(args))
    except ConfigError as exc:
        print(f"audit-otlp: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "run":
            return commands.run.main(args, config, lambda: load_config(getattr(args, "config", None), _options(args)))
        handler = {
            "export": commands.export.main,
            "status": commands.status.main,
            "verify": commands.verify.main,
            "check-config": commands.check_config.main,
            "health": commands.health.main,
        }[args.command]
        return handler(args, config)
    except ConfigError as exc:  # found at start-up, e.g. an unreadable TLS certificate
        print(f"audit-otlp: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FatalError as exc:
        return _fatal(str(exc))
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - a bug: one line for the operator, details in the log
        return _fatal(f"unexpected {type(exc).__name__}: {exc}", with_traceback=True)


def _fatal(reason: str, with_traceback: bool = False) -> int:
    """Exit 3 with a one-line reason (through the log once it is set up, else on stderr)."""
    if logging.getLogger().handlers:
        log.critical("fatal: %s", reason, exc_info=with_traceback)
    else:
        print(f"audit-otlp: fatal: {reason}", file=sys.stderr)
    return EXIT_FATAL


if __name__ == "__main__":
    raise SystemExit(main())
