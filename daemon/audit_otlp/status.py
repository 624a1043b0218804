"""`audit-otlp status`: where delivery stands, read from the checkpoint and the files themselves
(the daemon need not be running). Figures are exact: the backlog is counted, not estimated."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Any

from audit_otlp.checkpoint import Checkpoint, CheckpointStore
from audit_otlp.config import Config, mask_url
from audit_otlp.deadletter import DurableLog
from audit_otlp.fileid import fingerprint_matches

CHUNK = 4 * 1024 * 1024


def count_rows(path: Path, start: int) -> tuple[int, int]:
    """(bytes, complete lines) from `start` to the end of `path`."""
    rows = 0
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(start)
        while chunk := fh.read(CHUNK):
            rows += chunk.count(b"\n")
    return max(size - start, 0), rows


def _locate(checkpoint: Checkpoint | None, path: Path, rotated_glob: str) -> tuple[Path | None, int, list[Path]]:
    """Which file the checkpoint's offset is in, that offset, and newer files after it."""
    if checkpoint is None or checkpoint.cursor.identity is None:
        return (path if path.exists() else None), 0, []
    identity = checkpoint.cursor.identity
    candidates = [path] + sorted((Path(p) for p in glob.glob(rotated_glob) if not p.endswith((".gz", ".bz2", ".xz", ".zst"))),
                                 key=lambda p: p.stat().st_mtime)
    for candidate in candidates:
        try:
            fd = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue
        try:
            if identity.same_inode(os.fstat(fd)) and fingerprint_matches(fd, identity):
                newer = [] if candidate == path else [path]
                return candidate, checkpoint.cursor.offset, newer
        finally:
            os.close(fd)
    return (path if path.exists() else None), 0, []


def collect_status(config: Config) -> dict[str, Any]:
    store = CheckpointStore(config.checkpoint_path)
    checkpoint = store.load() if config.checkpoint_path.exists() else None
    path = config.source_path
    status: dict[str, Any] = {
        "file": str(path),
        "checkpoint_path": str(config.checkpoint_path),
        "endpoint": mask_url(config.endpoint),
        "checkpoint": None,
    }
    try:
        status["file_size"] = path.stat().st_size
    except OSError:
        status["file_size"] = None
    located, offset, newer = _locate(checkpoint, path, config["source.rotated_glob"])
    backlog_bytes = backlog_rows = 0
    held = []
    if located is not None:
        b, r = count_rows(located, offset)
        backlog_bytes += b
        backlog_rows += r
        if located != path:
            held.append({"path": str(located), "pending_bytes": b})
        for extra in newer:
            if extra.exists():
                b, r = count_rows(extra, 0)
                backlog_bytes += b
                backlog_rows += r
    status["offset"] = offset
    status["backlog_bytes"] = backlog_bytes
    status["backlog_rows"] = backlog_rows
    status["rotated_files_held"] = held
    if checkpoint is not None:
        cursor = checkpoint.cursor
        status["checkpoint"] = {
            "offset": cursor.offset,
            "file": cursor.identity.to_json() if cursor.identity else None,
            "last_line_sha256": cursor.last_line_sha256,
            "line_number": cursor.line_number,
            "updated": _iso(checkpoint.updated_unix),
        }
        status["delivered_spans"] = checkpoint.delivered_spans
        status["last_success"] = _iso(checkpoint.last_success_unix)
        status["last_error"] = checkpoint.last_error
        status["chain"] = {"verify": config["chain.verify"], "last_hash": cursor.chain_last_hash, "breaks": checkpoint.chain_breaks}
    else:
        status["delivered_spans"] = 0
        status["last_success"] = None
        status["last_error"] = None
        status["chain"] = {"verify": config["chain.verify"], "last_hash": None, "breaks": 0}
    receipts = config["delivery.receipts_path"]
    status["last_receipt"] = DurableLog(receipts).last_record() if receipts else None
    return status


def _iso(unix: float | None) -> str | None:
    return None if not unix else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def format_status(status: dict[str, Any]) -> str:
    lines = [
        f"file:            {status['file']} ({_size(status['file_size'])})",
        f"checkpoint:      {status['checkpoint_path']} at byte {status['offset']}",
        f"backlog:         {status['backlog_bytes']} bytes, {status['backlog_rows']} rows",
        f"delivered spans: {status['delivered_spans']}",
        f"last 2xx:        {status['last_success'] or 'never'}",
        f"last error:      {status['last_error'] or 'none'}",
        f"chain:           {'verified' if status['chain']['verify'] else 'not verified'}, {status['chain']['breaks']} breaks",
        f"endpoint:        {status['endpoint']}",
    ]
    for held in status["rotated_files_held"]:
        lines.append(f"rotated file:    {held['path']} ({held['pending_bytes']} bytes pending)")
    if status.get("last_receipt"):
        r = status["last_receipt"]
        lines.append(f"last receipt:    {r.get('time')} HTTP {r.get('status')} {r.get('spans')} spans")
    return "\n".join(lines)


def _size(size: int | None) -> str:
    return "missing" if size is None else f"{size} bytes"
