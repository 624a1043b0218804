"""`audit-otlp verify FILE...`: walk the hash chain offline, several files as one chain."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit_otlp.chain import ChainHasher, ChainState, verify_row
from audit_otlp.lines import LineSplitter
from audit_otlp.mapping import parse_line

CHUNK = 4 * 1024 * 1024


@dataclass
class Break:
    file: str
    line: int
    expected: str | None
    found: str | None
    kind: str  # "mismatch" | "restart" | "malformed"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "expected": self.expected, "found": self.found, "kind": self.kind}


@dataclass
class VerifyReport:
    files: list[str] = field(default_factory=list)
    rows: int = 0
    unchained_rows: int = 0
    malformed_lines: int = 0
    breaks: list[Break] = field(default_factory=list)
    last_hash: str | None = None

    @property
    def intact(self) -> bool:
        return not self.breaks

    def to_json(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "files": self.files,
            "rows": self.rows,
            "unchained_rows": self.unchained_rows,
            "malformed_lines": self.malformed_lines,
            "breaks": [b.to_json() for b in self.breaks],
            "first_break": self.breaks[0].to_json() if self.breaks else None,
            "last_hash": self.last_hash,
        }


def verify_files(paths: list[Path], hasher: ChainHasher, max_breaks: int = 100) -> VerifyReport:
    """Raises OSError when a file cannot be read (exit 2)."""
    report = VerifyReport()
    state = ChainState()
    for path in paths:
        report.files.append(str(path))
        splitter = LineSplitter(2**62)
        line_number = 0
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(CHUNK)
                lines = splitter.feed(chunk) if chunk else []
                if not chunk and (tail := splitter.take_unterminated()) is not None:
                    lines = [tail]
                for line in lines:
                    line_number += 1
                    data = line.data or b""
                    if not data.strip():
                        continue
                    row, _reason = parse_line(data)
                    if row is None:
                        report.malformed_lines += 1
                        if len(report.breaks) < max_breaks:
                            report.breaks.append(Break(str(path), line_number, None, None, "malformed"))
                        continue
                    verdict = verify_row(state, row, hasher)
                    report.rows += 1
                    if verdict.verified is None:
                        report.unchained_rows += 1
                    elif (verdict.broken or verdict.restart) and len(report.breaks) < max_breaks:
                        report.breaks.append(Break(str(path), line_number, verdict.expected, verdict.found,
                                                   "restart" if verdict.restart else "mismatch"))
                if not chunk:
                    break
    report.last_hash = state.last_hash
    return report
