"""`audit-otlp status`: where delivery stands, read from the checkpoint and the files themselves
(the daemon need not be running, and nothing is written). Figures are exact: the backlog is
counted, not estimated, and the resume point is found the way a restarting daemon finds it
(same file and intact last line; else the last delivered line searched for by its hash)."""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from audit_otlp.config import Config, mask_url
from audit_otlp.delivery.records import DurableLog
from audit_otlp.runtime.lifecycle import EXIT_OK
from audit_otlp.source.fileid import fingerprint_matches
from audit_otlp.state.checkpoint import Checkpoint

CHUNK = 4 * 1024 * 1024
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def count_rows(path: Path, start: int) -> tuple[int, int]:
    """(bytes, complete lines) from `start` to the end of `path`."""
    rows = 0
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(start)
        while chunk := fh.read(CHUNK):
            rows += chunk.count(b"\n")
    return max(size - start, 0), rows


def _iter_lines(path: Path):
    """(end offset, line bytes) of every complete line."""
    offset, pending = 0, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            data = pending + chunk
            start = 0
            while (nl := data.find(b"\n", start)) >= 0:
                yield offset - len(pending) + nl + 1, data[start:nl]
                start = nl + 1
            offset += len(chunk)
            pending = data[start:]


def find_line_end(path: Path, sha256_hex: str) -> int | None:
    """The offset just after the last line of `path` hashing to `sha256_hex` (as the tailer does)."""
    found = None
    for end, line in _iter_lines(path):
        if hashlib.sha256(line).hexdigest() == sha256_hex:
            found = end
    return found


def _last_line(path: Path) -> bytes | None:
    last = None
    for _, line in _iter_lines(path):
        last = line
    return last


def _line_before_matches(fd: int, offset: int, sha256_hex: str | None, length: int | None) -> bool:
    if offset == 0:
        return True
    if sha256_hex is None or length is None or offset - length - 1 < 0:
        return False
    data = os.pread(fd, length + 1, offset - length - 1)
    return data.endswith(b"\n") and hashlib.sha256(data[:-1]).hexdigest() == sha256_hex


@dataclass
class Position:
    """Where delivery continues: a file, an offset in it, and files to read after it."""

    file: Path | None
    offset: int
    then: list[tuple[Path, int]] = field(default_factory=list)  # (file, from offset)
    held: bool = False  # `file` is a rotated copy still to be drained
    resume_gap: bool = False  # the checkpoint's last line was not found: delivery restarts at 0


def locate(checkpoint: Checkpoint | None, path: Path, rotated_glob: str) -> Position:
    current = path if path.exists() else None
    if checkpoint is None or (checkpoint.cursor.identity is None and checkpoint.cursor.offset == 0):
        return Position(current, 0)
    cursor = checkpoint.cursor
    identity = cursor.identity
    rotated = sorted((Path(p) for p in glob.glob(rotated_glob) if not p.endswith(COMPRESSED)),
                     key=lambda p: p.stat().st_mtime)
    for candidate in [path, *rotated] if identity is not None else []:
        try:
            fd = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not (identity.same_inode(os.fstat(fd)) and fingerprint_matches(fd, identity)):
                continue
            if not _line_before_matches(fd, cursor.offset, cursor.last_line_sha256, cursor.last_line_length):
                break  # same file, but rewritten under us: search by content below
        finally:
            os.close(fd)
        if candidate == path:
            return Position(path, cursor.offset)
        # A rotated copy the daemon is still draining; then the new file after the lines they share.
        position = Position(candidate, cursor.offset, held=True)
        if current is not None:
            last = _last_line(candidate)
            overlap = find_line_end(current, hashlib.sha256(last).hexdigest()) if last is not None else None
            position.then.append((current, overlap or 0))
        return position
    if current is None:
        return Position(None, 0)
    if cursor.last_line_sha256 is not None:
        found = find_line_end(current, cursor.last_line_sha256)
        if found is not None:
            return Position(current, found)
    return Position(current, 0, resume_gap=True)


def read_checkpoint(path: Path) -> tuple[Checkpoint | None, str | None]:
    """The checkpoint or the reason it cannot be used; read-only (the daemon moves a corrupt one)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    try:
        return Checkpoint.from_json(data), None
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        return None, f"corrupt checkpoint {path}: {exc}"


def collect_status(config: Config) -> dict[str, Any]:
    checkpoint, checkpoint_problem = read_checkpoint(config.checkpoint.path)
    path = config.source.path
    status: dict[str, Any] = {
        "file": str(path),
        "checkpoint_path": str(config.checkpoint.path),
        "endpoint": mask_url(config.export.endpoint),
        "checkpoint": None,
    }
    if checkpoint_problem:
        status["checkpoint_problem"] = checkpoint_problem
    try:
        status["file_size"] = path.stat().st_size
    except OSError:
        status["file_size"] = None
    position = locate(checkpoint, path, config.source.rotated_glob)
    backlog_bytes = backlog_rows = 0
    held = []
    if position.file is not None:
        b, r = count_rows(position.file, position.offset)
        backlog_bytes, backlog_rows = b, r
        if position.held:
            held.append({"path": str(position.file), "pending_bytes": b, "pending_rows": r})
        for extra, start in position.then:
            b, r = count_rows(extra, start)
            backlog_bytes += b
            backlog_rows += r
    status["reading"] = str(position.file) if position.file is not None else None
    status["offset"] = position.offset
    status["backlog_bytes"] = backlog_bytes
    status["backlog_rows"] = backlog_rows
    status["resume_gap"] = position.resume_gap
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
        status["chain"] = {"verify": config.chain.verify, "key_source": config.chain_key_source,
                           "last_hash": cursor.chain_last_hash, "breaks": checkpoint.chain_breaks}
    else:
        status["delivered_spans"] = 0
        status["last_success"] = None
        status["last_error"] = None
        status["chain"] = {"verify": config.chain.verify, "key_source": config.chain_key_source,
                           "last_hash": None, "breaks": 0}
    receipts = config.delivery.receipts_path
    status["last_receipt"] = DurableLog(receipts).last_record() if receipts else None
    return status


def _iso(unix: float | None) -> str | None:
    return None if not unix else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def format_status(status: dict[str, Any]) -> str:
    chain = status["chain"]
    chain_text = "verified" if chain["verify"] else "not verified"
    chain_text += f", key: {chain['key_source']}, {chain['breaks']} breaks"
    if chain["last_hash"]:
        chain_text += f", last hash {chain['last_hash']}"
    lines = [
        f"file:            {status['file']} ({_size(status['file_size'])})",
        f"checkpoint:      {status['checkpoint_path']}" + ("" if status["checkpoint"] else " (none yet)"),
        f"position:        byte {status['offset']} of {status['reading'] or status['file']}",
        f"backlog:         {status['backlog_bytes']} bytes, {status['backlog_rows']} rows",
        f"delivered spans: {status['delivered_spans']}",
        f"last 2xx:        {status['last_success'] or 'never'}",
        f"last error:      {status['last_error'] or 'none'}",
        f"chain:           {chain_text}",
        f"endpoint:        {status['endpoint']}",
    ]
    if status.get("checkpoint_problem"):
        lines.append(f"CHECKPOINT:      {status['checkpoint_problem']}")
    if status.get("resume_gap"):
        lines.append("RESUME GAP:      the last delivered line is not in the file; delivery restarts at its beginning")
    for held in status["rotated_files_held"]:
        lines.append(f"rotated file:    {held['path']} ({held['pending_bytes']} bytes, {held['pending_rows']} rows pending)")
    if not status["rotated_files_held"]:
        lines.append("rotated files:   none held")
    if status.get("last_receipt"):
        r = status["last_receipt"]
        lines.append(f"last receipt:    {r.get('time')} HTTP {r.get('status')} {r.get('spans')} spans")
    return "\n".join(lines)


def _size(size: int | None) -> str:
    return "missing" if size is None else f"{size} bytes"


def main(args: argparse.Namespace, config: Config) -> int:
    status = collect_status(config)
    if args.json:
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_status(status))
    return EXIT_OK
