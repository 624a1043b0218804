"""`audit-otlp run`: set up logging for who is watching (a terminal, journald, a container), then
run the daemon until it stops."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from audit_otlp.config import Config, parse_duration
from audit_otlp.runtime.lifecycle import EXIT_USAGE, run_daemon
from audit_otlp.runtime.logs import setup_logging
from audit_otlp.runtime.wiring import RunOptions


def main(args: argparse.Namespace, config: Config, reload: Callable[[], Config]) -> int:
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
    return run_daemon(config, options, terminal=terminal, verbose=args.verbose, reloader=reload)
