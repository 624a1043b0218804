"""Log output: readable text for terminals and journald, JSON for containers, and a filter that
masks every configured secret in every record, whatever code path produced it."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import Protocol

import orjson

_COLOURS = {"DEBUG": "\033[2m", "INFO": "\033[36m", "WARNING": "\033[33m", "ERROR": "\033[31;1m", "CRITICAL": "\033[31;1m"}
_RESET = "\033[0m"


class RedactingFilter(logging.Filter):
    """Replaces any configured secret with *** in the final message."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            masked = message
            for secret in self.secrets:
                if secret in masked:
                    masked = masked.replace(secret, "***")
            if masked != message:
                record.msg, record.args = masked, None
            if record.exc_info and record.exc_text is None and record.exc_info[1] is not None:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                for secret in self.secrets:
                    record.exc_text = record.exc_text.replace(secret, "***")
        return True


class TextFormatter(logging.Formatter):
    def __init__(self, colour: bool, timestamps: bool = True) -> None:
        super().__init__()
        self.colour = colour
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname
        if self.colour:
            level = f"{_COLOURS.get(level, '')}{level:<7}{_RESET}"
        else:
            level = f"{level:<7}"
        stamp = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z "
            if self.timestamps
            else ""
        )
        text = f"{stamp}{level} {record.getMessage()}"
        if record.exc_text or record.exc_info:
            text += "\n" + (record.exc_text or self.formatException(record.exc_info))  # type: ignore[arg-type]
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text or record.exc_info:
            doc["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return orjson.dumps(doc).decode("utf-8")


class SupportsWrite(Protocol):
    """What a log handler writes to: a text stream, or the terminal's progress line."""

    def write(self, data: str, /) -> object: ...
    def flush(self) -> None: ...


def setup_logging(
    fmt: str, level: str, secrets: Iterable[str] = (), verbose: bool = False, stream: SupportsWrite | None = None
) -> logging.Handler:
    """Configure the root logger once; returns the handler (SIGHUP may change its level)."""
    stream = stream or sys.stderr
    handler: logging.StreamHandler[SupportsWrite] = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    apply_log_settings(fmt, level, verbose)
    for noisy in ("httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def _formatter(fmt: str, stream: object) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    # journald adds its own timestamps; a terminal gets them, coloured; a pipe or file plain.
    under_journald = "JOURNAL_STREAM" in os.environ
    isatty = getattr(stream, "isatty", None)
    return TextFormatter(colour=bool(isatty and isatty()), timestamps=not under_journald)


def apply_log_settings(fmt: str | None, level: str, verbose: bool = False) -> None:
    """Set the format (None: keep it) and level of the root handlers (at start-up and on SIGHUP)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if fmt is not None and isinstance(handler, logging.StreamHandler):
            handler.setFormatter(_formatter(fmt, handler.stream))
    root.setLevel(logging.DEBUG if verbose else getattr(logging, level.upper()))
