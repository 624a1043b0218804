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
from audit_otlp.runtime.exits import EXIT_OK
from audit_otlp.runtime.logs import counted
from audit_otlp.runtime.wiring import spool_directory
from audit_otlp.source.backlog import find_backlog
from audit_otlp.source.sources import expand, rotated_glob_for, several
from audit_otlp.source.spool import Spool
from audit_otlp.state.checkpoint import Checkpoint
from audit_otlp.state.migration import read_checkpoint as parse_checkpoint


def read_checkpoint(path: Path) -> tuple[Checkpoint | None, str | None]:
    """The checkpoint or the reason it cannot be used; read-only (the daemon moves a corrupt one)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    try:
        return parse_checkpoint(data), None
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        return None, f"corrupt checkpoint {path}: {exc}"


def collect_status(config: Config) -> dict[str, Any]:
    """Every source's figures under "sources"; at the top, the first source's (the only one,
    usually) with the backlog and spool summed over all of them."""
    checkpoint, checkpoint_problem = read_checkpoint(config.checkpoint.path)
    paths = expand(config.source.paths) or [config.source.path]
    is_several = several(config.source.paths, paths)
    if checkpoint is not None and len(paths) == 1:
        checkpoint = checkpoint.keyed_for(str(paths[0]))
    spool = Spool(spool_directory(config), config.source.spool_max_bytes)
    sources = [
        _source_status(config, checkpoint, path, rotated_glob_for(path, is_several, config.source.rotated_glob), spool)
        for path in paths
    ]
    status: dict[str, Any] = {
        "checkpoint_path": str(config.checkpoint.path),
        "endpoint": mask_url(config.export.endpoint),  # replaced below by the last run's, when recorded
        "configured_endpoint": mask_url(config.export.endpoint),
        **sources[0],
        "backlog_bytes": sum(s["backlog_bytes"] for s in sources),
        "backlog_rows": sum(s["backlog_rows"] for s in sources),
        "resume_gaps": sum(s["resume_gaps"] for s in sources),
        "spool": {
            "directory": str(spool.directory),
            "max_bytes": config.source.spool_max_bytes,
            **{k: sum(s["spool"][k] for s in sources) for k in ("files", "bytes", "cut_bytes", "cut_lines")},
        },
        "sources": sources,
    }
    if checkpoint_problem:
        status["checkpoint_problem"] = checkpoint_problem
    if checkpoint is not None:
        status["delivered_spans"] = checkpoint.delivered_spans
        status["last_success"] = _iso(checkpoint.last_success_unix)
        status["last_error"] = checkpoint.last_error
        if checkpoint.endpoint is not None:  # what the last run used (an --endpoint option included)
            status["endpoint"] = checkpoint.endpoint
    else:
        status["delivered_spans"] = 0
        status["last_success"] = None
        status["last_error"] = None
    receipts = config.delivery.receipts_path
    status["last_receipt"] = DurableLog(receipts).last_record() if receipts else None
    return status


def _source_status(config: Config, checkpoint: Checkpoint | None, path: Path, pattern: str, spool: Spool) -> dict[str, Any]:
    """One audit log: where delivery stands and what a restart would read (the daemon's search)."""
    status: dict[str, Any] = {"file": str(path), "checkpoint": None}
    try:
        status["file_size"] = path.stat().st_size
    except OSError:
        status["file_size"] = None
    source = checkpoint.sources.get(str(path)) if checkpoint is not None else None
    backlog = find_backlog(path, pattern, source, config.source.max_line_bytes, spool)
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
        "files": len(spooled),
        "bytes": sum(r.kept_bytes for r in spooled),
        "cut_bytes": source.spool_cut_bytes if source is not None else 0,
        "cut_lines": source.spool_cut_lines if source is not None else 0,
    }
    status["chain"] = {"verify": config.chain.verify, "key_source": config.chain_key_source, "last_hash": None, "breaks": 0}
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
        status["chain"] = {
            "verify": config.chain.verify,
            "key_source": config.chain_key_source,
            "last_hash": cursor.chain_last_hash,
            "breaks": source.chain_breaks,
        }
    return status


def _iso(unix: float | None) -> str | None:
    return None if not unix else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def format_status(status: dict[str, Any]) -> str:
    chain = status["chain"]
    if not chain["verify"]:
        chain_text = "not verified"
    else:
        chain_text = counted(chain["breaks"], "break") if chain["breaks"] else "intact"
        chain_text += f"; key: {chain['key_source']}"
    if chain["last_hash"]:
        chain_text += f"; last hash {chain['last_hash']}"
    lines = [
        f"file:            {status['file']} ({_size(status['file_size'])})",
        f"checkpoint:      {status['checkpoint_path']}" + ("" if status["checkpoint"] else " (none yet)"),
        f"position:        byte {status['offset']} of {status['reading'] or status['file']}",
        f"backlog:         {counted(status['backlog_bytes'], 'byte')}, {counted(status['backlog_rows'], 'row')}",
        f"delivered spans: {status['delivered_spans']:,}",
        f"last 2xx:        {status['last_success'] or 'never'}",
        f"last error:      {status['last_error'] or 'none'}",
        f"chain:           {chain_text}",
        f"endpoint:        {status['endpoint']}"
        + (" (the last run's)" if status["endpoint"] != status["configured_endpoint"] else ""),
    ]
    if len(status["sources"]) > 1:
        lines[0] = f"files:           {len(status['sources'])} audit logs (backlog and spool summed below)"
        for source in status["sources"]:
            lines.append(
                f"source:          {source['file']}: byte {source['offset']} of {source['reading'] or source['file']}, "
                f"backlog {source['backlog_bytes']} bytes, {source['backlog_rows']} rows, "
                f"{source['chain']['breaks']} chain breaks, {source['resume_gaps']} resume gaps"
            )
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
