"""The command line: parse arguments, load the configuration, call the command. Nothing else."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import orjson

from audit_otlp import __version__
from audit_otlp.runtime.lifecycle import EXIT_FATAL, EXIT_OK, EXIT_USAGE, FatalError, RunOptions, build_envelope, run_daemon
from audit_otlp.delivery.batching import BatchLimits
from audit_otlp.mapping.chain import ChainHasher
from audit_otlp.config import Config, ConfigError, load_config, parse_duration
from audit_otlp.runtime.logs import setup_logging
from audit_otlp.mapping.ids import MappingOptions

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
    parser = _Parser(prog="audit-otlp", description="Ship a hash-chained audit.jsonl to OpenTelemetry backends as OTLP/JSON spans.")
    parser.add_argument("--version", action="version", version=f"audit-otlp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="follow the audit log and deliver spans (the daemon)")
    _add_source_options(run)
    run.add_argument("--once", action="store_true", help="deliver everything up to the end of the file, then exit")
    run.add_argument("--deadline", metavar="SECONDS", help="with --once: give up after this long (exit 1)")
    run.add_argument("--dry-run", action="store_true", help="print OTLP/JSON requests to stdout; post nothing, write no checkpoint")
    run.add_argument("--foreground", action="store_true", help="for a person at a terminal: readable logs and a progress line")
    run.add_argument("-v", "--verbose", action="store_true", help="log each request's outcome (status, spans, latency)")
    run.add_argument("--health-listen", metavar="HOST:PORT", help="serve /healthz, /readyz, /metrics (env AUDIT_OTLP_HEALTH_LISTEN)")
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
    handler = {"run": cmd_run, "export": cmd_export, "status": cmd_status, "verify": cmd_verify,
               "check-config": cmd_check_config, "health": cmd_health}[args.command]
    try:
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


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    deadline = None
    if args.deadline is not None:
        try:
            deadline = parse_duration(args.deadline)
        except ValueError as exc:
            print(f"audit-otlp: --deadline: invalid value {args.deadline!r}; accepted: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not args.once:
            print("audit-otlp: --deadline: only valid with --once", file=sys.stderr)
            return EXIT_USAGE
    terminal = None
    log_format = config.log.format
    if args.foreground:
        # For a person: readable text (unless --log-format json was asked for on this command line),
        # coloured on a TTY, and a live progress line on a TTY only.
        if config.origin.get("log.format") != "option":
            log_format = "text"
        if sys.stderr.isatty():
            from audit_otlp.runtime.progress import TerminalLine
            terminal = TerminalLine(sys.stderr)
    setup_logging(log_format, config.log.level, config.secrets, verbose=args.verbose, stream=terminal)
    options = RunOptions(once=args.once, deadline=deadline, dry_run=args.dry_run, foreground=args.foreground)
    return run_daemon(config, options, terminal=terminal, verbose=args.verbose,
                      reloader=lambda: load_config(getattr(args, "config", None), _options(args)))


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from audit_otlp.commands.export import export_requests, write_export

    path = Path(args.path)
    setup_logging(config.log.format, config.log.level, config.secrets)
    limits = BatchLimits(config.batch.max_spans, config.batch.max_bytes, config.batch.max_wait)
    hasher = ChainHasher(config.chain_key) if config.chain.verify else None
    try:
        write_export(sys.stdout.buffer, export_requests(path, build_envelope(config), limits,
                                                         MappingOptions(config.mapping.trace_id_from), hasher,
                                                         config.source.max_line_bytes))
    except OSError as exc:
        print(f"audit-otlp: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    from audit_otlp.commands.status import collect_status, format_status

    status = collect_status(config)
    if args.json:
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_status(status))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, config: Config) -> int:
    from audit_otlp.commands.verify import verify_files

    paths = [Path(p) for p in args.paths]
    try:
        report = verify_files(paths, ChainHasher(config.chain_key))
    except OSError as exc:
        message = f"cannot read {exc.filename}: {exc.strerror or exc}"
        if args.json:
            print(json.dumps({"intact": None, "error": message}))
        else:
            print(f"audit-otlp verify: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    elif report.intact:
        print(f"intact: {report.rows} chained rows in {len(paths)} file(s); last hash {report.last_hash}")
        if report.anchored:
            print("note: the first row continues an earlier chain; its own prev_hash could not be checked")
    else:
        print(f"BROKEN at {report.breaks[0].describe()}")
        if report.break_count > 1:
            print(f"{report.break_count - 1} more break(s); --json lists them")
    return 0 if report.intact else 1


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    masked = config.masked()
    origin = dict(config.origin)
    # Values that are not keys of their own: where the chain key and vendor preset came from.
    if config.chain_key:
        origin["chain.key"] = "env:AUDIT_OTLP_CHAIN_KEY" if os.environ.get("AUDIT_OTLP_CHAIN_KEY") else "file:chain.key_file"
    else:
        origin["chain.key"] = "default"
    if config.vendor:
        origin["vendor"] = f"env:{config.vendor.env_name}"
    if args.json:
        doc = {"config_file": str(config.config_file) if config.config_file else None, "values": masked, "origin": origin}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str).decode())
        return EXIT_OK
    print(f"# configuration file: {config.config_file or 'none (defaults, environment and options only)'}")
    print("# origin: default | file | env:VARIABLE | option; secrets are shown as ***")
    width = max(len(k) for k in masked)
    for key in sorted(masked):
        print(f"{key:<{width}} = {_show(masked[key])}    # {origin.get(key, 'derived')}")
    return EXIT_OK


def _show(value: Any) -> str:
    if isinstance(value, (dict, list, bool)) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def cmd_health(args: argparse.Namespace, config: Config) -> int:
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


if __name__ == "__main__":
    raise SystemExit(main())
