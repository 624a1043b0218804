"""`audit-otlp verify FILE...`: walk the hash chain offline with the daemon's own judgement
(`mapping.chain.ChainJudge`) on every line, and count the verdicts. Exit 0 without a break
(forks are normal with parallel writers; `--strict` fails on them too), 1 on a break, 2 when a
file cannot be read or the chain cannot be checked (it looks keyed and no key is known).

Files are given in rotation order (oldest first) and continue one chain. The producer's own
rotation rewrites the last lines of the old file into the new one, so a file may begin with
lines the previous file already holds: those are recognised by their link hash, checked to be
the same lines in the same order, and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from audit_otlp.config import Config
from audit_otlp.config.chain_key import ChainKeyError, find_chain_key
from audit_otlp.mapping.canonical import canonical_line
from audit_otlp.mapping.chain import BREAK, FORK, VERDICTS, ChainHasher, ChainJudge, ChainState, unparsed_link
from audit_otlp.mapping.parse import parse_line, too_deep

CHUNK = 8 * 1024 * 1024
OVERLAP_WINDOW = 65536  # link hashes of the previous file kept to recognise a tail-rewrite


@dataclass
class Finding:
    file: str
    line: int  # 1-based line number in `file`
    expected: str | None  # the hash of the line before (what an `ok` line carries)
    found: str | None  # the prev_hash it carries (for an overlap mismatch: the line's own hash)
    kind: str  # "break" | "fork" | "overlap_mismatch"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "expected": self.expected, "found": self.found, "kind": self.kind}

    def describe(self) -> str:
        where = f"{self.file} line {self.line}"
        if self.kind == "overlap_mismatch":
            return (
                f"{where}: this line repeats the previous file's tail but differs from it "
                f"(expected link hash {self.expected}, found {self.found})"
            )
        if self.kind == FORK:
            return f"{where}: prev_hash {self.found} names an earlier line, not the one before (which hashes to {self.expected})"
        return f"{where}: prev_hash {self.found} names no earlier line (the line before hashes to {self.expected})"


@dataclass
class VerifyReport:
    files: list[str] = field(default_factory=list)
    lines: int = 0  # lines judged (every non-blank line is a link)
    verdicts: Counter[str] = field(default_factory=Counter)
    overlap_rows: int = 0  # lines a tail-rewrite repeated from the previous file
    malformed_lines: int = 0  # not a JSON object (still links: hashed as the producer does)
    findings: list[Finding] = field(default_factory=list)  # breaks, overlap mismatches, forks
    break_count: int = 0  # breaks and overlap mismatches, also those beyond the listed ones
    anchored: bool = False  # the first line continues an earlier chain (its prev_hash is unchecked)
    looks_keyed: bool = False  # no key, and the links do not match plain SHA-256
    last_hash: str | None = None

    @property
    def intact(self) -> bool:
        return self.break_count == 0 and not self.looks_keyed

    def counts(self) -> dict[str, int]:
        return {v: self.verdicts.get(v, 0) for v in VERDICTS}

    def to_json(self) -> dict[str, Any]:
        breaks = [f for f in self.findings if f.kind != FORK]
        return {
            "intact": self.intact,
            "files": self.files,
            "lines": self.lines,
            "verdicts": self.counts(),
            "overlap_rows": self.overlap_rows,
            "malformed_lines": self.malformed_lines,
            "break_count": self.break_count,
            "first_break": breaks[0].to_json() if breaks else None,
            "breaks": [f.to_json() for f in breaks],
            "forks": [f.to_json() for f in self.findings if f.kind == FORK],
            "anchored": self.anchored,
            "looks_keyed": self.looks_keyed,
            "last_hash": self.last_hash,
        }


class _Walker:
    """One chain across files; `feed_file` walks one file."""

    def __init__(self, hasher: ChainHasher, max_findings: int, list_forks: bool) -> None:
        self.hasher = hasher
        self.max_findings = max_findings
        self.list_forks = list_forks
        self.judge = ChainJudge(ChainState(), hasher)
        self.report = VerifyReport()
        self.window: deque[str] = deque(maxlen=OVERLAP_WINDOW)  # link hashes of the current file

    def _find(self, finding: Finding) -> None:
        if finding.kind != FORK:
            self.report.break_count += 1
        if len(self.report.findings) < self.max_findings:
            self.report.findings.append(finding)

    def _link(self, line: bytes) -> tuple[Any, str]:
        """(prev_hash or None, link hash) of a non-blank line."""
        hasher, report = self.hasher, self.report
        deep = too_deep(line)
        try:
            row = orjson.loads(line) if not deep else None
        except orjson.JSONDecodeError:
            row, _reason = parse_line(line)  # integers beyond 64 bits, lone surrogates
        if type(row) is dict:
            return row.get("prev_hash"), hasher.hash_canonical(canonical_line(line, row))
        report.malformed_lines += 1
        return None, unparsed_link(hasher, line, deep)

    def feed_file(self, path: Path, keep_window: bool) -> None:
        name = str(path)
        report, judge = self.report, self.judge
        previous = list(self.window)  # the previous file's tail (empty for the first file)
        self.window.clear()
        overlap_at: int | None = None  # index into `previous` of the next expected repeated line
        first = True
        line_number = 0
        offset = 0  # of the next line in the file
        rest = b""
        with open(path, "rb") as fh:
            while not report.looks_keyed:
                chunk = fh.read(CHUNK)
                if chunk:
                    lines = (rest + chunk if rest else chunk).split(b"\n")
                    rest = lines.pop()
                else:
                    lines = [rest] if rest else []
                for line in lines:
                    line_number += 1
                    line_offset, offset = offset, offset + len(line) + 1
                    if not line.strip():
                        continue
                    found, link = self._link(line)
                    if keep_window:
                        self.window.append(link)
                    if overlap_at is not None:  # inside a tail-rewrite's repeat of the previous file
                        if link == previous[overlap_at]:
                            report.overlap_rows += 1
                            overlap_at = overlap_at + 1 if overlap_at + 1 < len(previous) else None
                            continue
                        self._find(Finding(name, line_number, previous[overlap_at], link, "overlap_mismatch"))
                        overlap_at = None
                    elif first and previous and link in previous and link != judge.state.last_hash:
                        first = False
                        start = previous.index(link)
                        report.overlap_rows += 1
                        overlap_at = start + 1 if start + 1 < len(previous) else None
                        continue
                    first = False
                    verdict = judge.judge(found, link, line_offset, line)
                    if judge.looks_keyed:
                        report.looks_keyed = True
                        break
                    report.lines += 1
                    report.verdicts[verdict.verdict] += 1
                    report.anchored = report.anchored or verdict.anchor
                    if verdict.verdict == BREAK or (verdict.verdict == FORK and self.list_forks):
                        self._find(Finding(name, line_number, verdict.expected, verdict.found, verdict.verdict))
                if not chunk:
                    break


def verify_files(paths: list[Path], hasher: ChainHasher, max_breaks: int = 100, list_forks: bool = False) -> VerifyReport:
    """Walk `paths` (rotation order) as one chain. Raises OSError when a file cannot be read."""
    walker = _Walker(hasher, max_breaks, list_forks)
    for index, path in enumerate(paths):
        walker.report.files.append(str(path))
        walker.feed_file(path, keep_window=index < len(paths) - 1)
    walker.report.last_hash = walker.judge.state.last_hash
    return walker.report


def _counts_text(report: VerifyReport) -> str:
    return ", ".join(f"{verdict} {count}" for verdict, count in report.counts().items())


def main(args: argparse.Namespace, config: Config) -> int:
    paths = [Path(p) for p in args.paths]
    strict = bool(getattr(args, "strict", False))
    try:
        # The key as the daemon finds it, the producer's key file being the one beside these files.
        found = find_chain_key(os.environ, config.chain.key_file, paths[0])
    except ChainKeyError as exc:
        print(f"audit-otlp verify: {exc}", file=sys.stderr)
        return 2
    if found.problem:
        print(f"warning: {found.problem}", file=sys.stderr)
    try:
        report = verify_files(paths, ChainHasher(found.key), list_forks=strict)
    except OSError as exc:
        message = f"cannot read {exc.filename}: {exc.strerror or exc}"
        if args.json:
            print(json.dumps({"intact": None, "error": message}))
        else:
            print(f"audit-otlp verify: {message}", file=sys.stderr)
        return 2
    forks = report.verdicts.get(FORK, 0)
    if args.json:
        print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    elif report.looks_keyed:
        print(
            "cannot verify: this chain looks keyed; no key configured (its links do not match plain SHA-256). "
            "Give the key with AUDIT_OTLP_CHAIN_KEY or chain.key_file; the hydra plugin's is hmac-key.bin "
            f"beside the audit log (key source here: {found.source})",
            file=sys.stderr,
        )
    elif report.intact:
        print(f"intact: {report.lines} lines in {len(paths)} file(s): {_counts_text(report)}; last hash {report.last_hash}")
        if forks:
            print(
                f"note: {forks} fork(s): rows naming an earlier line, as parallel writers do (a fork cannot be told "
                "apart from a row inserted with a copied prev_hash; --strict fails on them)"
            )
        if report.anchored:
            print("note: the first line continues an earlier chain; its own prev_hash could not be checked")
    else:
        first = next(f for f in report.findings if f.kind != FORK)
        print(f"BROKEN at {first.describe()}")
        print(f"verdicts: {_counts_text(report)}")
        if report.break_count > 1:
            print(f"{report.break_count - 1} more break(s); --json lists them")
    if report.looks_keyed:
        return 2
    if not report.intact or (strict and forks):
        if strict and forks and report.intact and not args.json:
            print(f"FORKED (--strict) at {next(f for f in report.findings if f.kind == FORK).describe()}")
        return 1
    return 0
