"""`audit-otlp verify FILE...`: walk the hash chain offline, several files as one chain.

Files are given in rotation order (oldest first) and continue one chain. The producer's own
rotation rewrites the last rows of the old file into the new one, so a file may begin with
rows the previous file already holds: those are recognised by their hash, checked to be the
same rows in the same order, and skipped.

The inner loop is written for speed (at least 200k rows/s): big reads, `bytes.split`, and the
common case (the row links to the row before it) handled inline; everything else goes through
`chain.judge`, the same judgement the daemon applies.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from audit_otlp.config import Config
from audit_otlp.mapping.canonical import canonical_line
from audit_otlp.mapping.chain import ChainHasher, ChainState, ChainVerdict, judge
from audit_otlp.mapping.parse import parse_line, too_deep

CHUNK = 8 * 1024 * 1024
OVERLAP_WINDOW = 65536  # row hashes of the previous file kept to recognise a tail-rewrite


@dataclass
class Break:
    file: str
    line: int  # 1-based line number in `file`
    expected: str | None  # the prev_hash the row should carry (base64), when known
    found: str | None  # the prev_hash it carries
    kind: str  # "mismatch" | "restart" | "malformed" | "overlap_mismatch"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "expected": self.expected, "found": self.found, "kind": self.kind}

    def describe(self) -> str:
        where = f"{self.file} line {self.line}"
        if self.kind == "malformed":
            return f"{where}: not a JSON object (the chain cannot be checked across it)"
        if self.kind == "overlap_mismatch":
            return (
                f"{where}: this row repeats the previous file's tail but differs from it "
                f"(expected row hash {self.expected}, found {self.found})"
            )
        what = "restarts the chain with GENESIS" if self.kind == "restart" else "prev_hash does not match"
        return f"{where}: {what}: expected prev_hash {self.expected}, found {self.found}"


@dataclass
class VerifyReport:
    files: list[str] = field(default_factory=list)
    rows: int = 0  # chained rows checked
    unchained_rows: int = 0  # rows without prev_hash
    overlap_rows: int = 0  # rows a tail-rewrite repeated from the previous file
    malformed_lines: int = 0
    breaks: list[Break] = field(default_factory=list)
    break_count: int = 0  # all breaks, also those beyond the listed ones
    anchored: bool = False  # the first row continues an earlier chain (its prev_hash is unchecked)
    last_hash: str | None = None

    @property
    def intact(self) -> bool:
        return self.break_count == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "files": self.files,
            "rows": self.rows,
            "unchained_rows": self.unchained_rows,
            "overlap_rows": self.overlap_rows,
            "malformed_lines": self.malformed_lines,
            "break_count": self.break_count,
            "first_break": self.breaks[0].to_json() if self.breaks else None,
            "breaks": [b.to_json() for b in self.breaks],
            "anchored": self.anchored,
            "last_hash": self.last_hash,
        }


class _Walker:
    """One chain across files; `feed_file` walks one file."""

    def __init__(self, hasher: ChainHasher, max_breaks: int) -> None:
        self.hasher = hasher
        self.max_breaks = max_breaks
        self.state = ChainState()
        self.report = VerifyReport()
        self.window: deque[str] = deque(maxlen=OVERLAP_WINDOW)  # row hashes of the current file

    def _break(self, path: str, line: int, expected: str | None, found: str | None, kind: str) -> None:
        self.report.break_count += 1
        if len(self.report.breaks) < self.max_breaks:
            self.report.breaks.append(Break(path, line, expected, found, kind))

    def feed_file(self, path: Path, keep_window: bool) -> None:
        name = str(path)
        report, state, hasher = self.report, self.state, self.hasher
        previous = list(self.window)  # the previous file's tail (empty for the first file)
        self.window.clear()
        window_append = self.window.append if keep_window else None
        overlap_at: int | None = None  # index into `previous` of the next expected repeated row
        first_chained = True
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        hash_canonical = hasher.hash_canonical
        line_number = 0
        rest = b""
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(CHUNK)
                if chunk:
                    lines = (rest + chunk if rest else chunk).split(b"\n")
                    rest = lines.pop()
                else:
                    lines = [rest] if rest else []
                for line in lines:
                    line_number += 1
                    try:
                        row = loads(line) if not too_deep(line) else None
                    except decode_error:
                        if not line.strip():
                            continue  # blank line
                        row, _reason = parse_line(line)
                    if type(row) is not dict:
                        report.malformed_lines += 1
                        self._break(name, line_number, None, None, "malformed")
                        continue
                    found = row.get("prev_hash")
                    if found is None:
                        report.unchained_rows += 1
                        continue
                    row_hash = hash_canonical(canonical_line(line, row))
                    if window_append is not None:
                        window_append(row_hash)
                    if overlap_at is not None:
                        # Inside a tail-rewrite's repeat of the previous file.
                        if row_hash == previous[overlap_at]:
                            report.overlap_rows += 1
                            overlap_at += 1
                            if overlap_at == len(previous):
                                overlap_at = None
                            continue
                        self._break(name, line_number, previous[overlap_at], row_hash, "overlap_mismatch")
                        overlap_at = None
                        state.before_last_hash, state.last_hash, state.last_broken = state.last_hash, row_hash, True
                        state.rows += 1
                        report.rows += 1
                        continue
                    if first_chained:
                        first_chained = False
                        if found != state.last_hash and previous:
                            try:
                                start = previous.index(row_hash)
                            except ValueError:
                                start = -1
                            if start >= 0:
                                report.overlap_rows += 1
                                overlap_at = start + 1 if start + 1 < len(previous) else None
                                continue
                    report.rows += 1
                    if found == state.last_hash:  # the common case, inline
                        state.before_last_hash = state.last_hash
                        state.last_hash = row_hash
                        state.last_broken = False
                        state.rows += 1
                        continue
                    verdict: ChainVerdict = judge(state, found, row_hash)
                    if verdict.anchor:
                        report.anchored = True
                    elif verdict.broken:
                        self._break(name, line_number, verdict.expected, verdict.found, verdict.kind)
                if not chunk:
                    break


def verify_files(paths: list[Path], hasher: ChainHasher, max_breaks: int = 100) -> VerifyReport:
    """Walk `paths` (rotation order) as one chain. Raises OSError when a file cannot be read."""
    walker = _Walker(hasher, max_breaks)
    for index, path in enumerate(paths):
        walker.report.files.append(str(path))
        walker.feed_file(path, keep_window=index < len(paths) - 1)
    walker.report.last_hash = walker.state.last_hash
    return walker.report


def main(args: argparse.Namespace, config: Config) -> int:
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
