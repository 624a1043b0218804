"""`audit-otlp status`: where delivery stands, read from the checkpoint and the files themselves
(the daemon need not be running, and nothing is written). Figures are exact: the backlog is
counted, not estimated, by the daemon's own resume search (`source/backlog.py`); this module
only reads the checkpoint and formats."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import orjson

from audit_otlp.config import Config, mask_url
from audit_otlp.delivery.records import DurableLog
from audit_otlp.runtime.lifecycle import EXIT_OK
from audit_otlp.runtime.wiring import spool_directory
from audit_otlp.source.backlog import find_backlog
from audit_otlp.source.spool import Spool
from audit_otlp.state.checkpoint import Checkpoint


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
    source = checkpoint.source(str(path)) if checkpoint is not None else None
    spool = Spool(spool_directory(config), config.source.spool_max_bytes)
    backlog = find_backlog(path, config.source.rotated_glob, source, config.source.max_line_bytes, spool)
    first = backlog.files[0] if backlog.files else None
    status["reading"] = str(first.path) if first is not None else None
    status["offset"] = first.offset if first is not None else 0
    status["backlog_bytes"] = backlog.pending_bytes
    status["backlog_rows"] = backlog.pending_rows
    status["resume_gap"] = backlog.resume_gap
    status["resume_gap_reason"] = backlog.gap
    status["rotated_files_held"] = [
        {"path": str(f.path), "pending_bytes": f.pending_bytes, "pending_rows": f.pending_rows, "spooled": f.spooled}
        for f in backlog.files
        if f.rotated
    ]
    status["resume_gaps"] = source.resume_gaps if source is not None else 0
    status["last_resume_gap"] = (
        {"reason": source.last_gap, "time": _iso(source.last_gap_unix)} if source is not None and source.last_gap else None
    )
    spooled = [v.spool for v in (source.versions if source is not None else ()) if v.spool is not None]
    status["spool"] = {
        "directory": str(spool.directory),
        "files": len(spooled),
        "bytes": sum(r.kept_bytes for r in spooled),
        "max_bytes": config.source.spool_max_bytes,
        "cut_bytes": source.spool_cut_bytes if source is not None else 0,
        "cut_lines": source.spool_cut_lines if source is not None else 0,
    }
    if checkpoint is not None and source is not None:
        cursor = source.position
        status["versions_held"] = [
            {"path": v.path, "file": v.identity.to_json(), "size": v.size, "start": v.start, "spooled": v.spool is not None}
            for v in source.versions
        ]
        status["checkpoint"] = {
            "offset": cursor.offset,
            "file": cursor.identity.to_json() if cursor.identity else None,
            "last_line_sha256": cursor.last_line_sha256,
            "line_number": cursor.line_number,
            "updated": _iso(checkpoint.updated_unix),
            "format_version": checkpoint.migrated_from or 2,
        }
        status["delivered_spans"] = checkpoint.delivered_spans
        status["last_success"] = _iso(checkpoint.last_success_unix)
        status["last_error"] = checkpoint.last_error
        status["chain"] = {"verify": config.chain.verify, "last_hash": cursor.chain_last_hash, "breaks": source.chain_breaks}
    else:
        status["delivered_spans"] = 0
        status["last_success"] = None
        status["last_error"] = None
        status["chain"] = {"verify": config.chain.verify, "last_hash": None, "breaks": 0}
    receipts = config.delivery.receipts_path
    status["last_receipt"] = DurableLog(receipts).last_record() if receipts else None
    return status


def _iso(unix: float | None) -> str | None:
    return None if not unix else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def format_status(status: dict[str, Any]) -> str:
    chain = status["chain"]
    chain_text = "verified" if chain["verify"] else "not verified"
    chain_text += f", {chain['breaks']} breaks"
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
        lines.append(f"RESUME GAP:      a restart now would report rows missing: {status.get('resume_gap_reason')}")
    if status.get("resume_gaps"):
        last = status.get("last_resume_gap") or {}
        lines.append(f"resume gaps:     {status['resume_gaps']} so far; the last at {last.get('time')}: {last.get('reason')}")
    spool = status["spool"]
    if spool["files"] or spool["cut_bytes"]:
        lines.append(
            f"spool:           {spool['files']} files, {spool['bytes']} bytes of {spool['max_bytes']} in {spool['directory']}"
            + (f"; {spool['cut_bytes']} bytes ({spool['cut_lines']} lines) could not be kept" if spool["cut_bytes"] else "")
        )
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
