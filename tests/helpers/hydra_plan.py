"""What the hydra simulator (`hydra_sim`) writes: a seeded plan of hook calls dealt to the
writers, the report of a run, and an analysis of where each row's prev_hash points.

The vocabulary is what the plugin writes for real calls: file tools with their path (non-ASCII,
quotes and backslashes included), tools without a path (empty target), Bash commands cut to 200
bytes with tokens masked, an `rm -rf /` that action-guard records, Writes in which
secret-scanner finds a key, WebFetch calls that egress-shield blocks, and a line that is not
JSON. Standard library only.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hydra_producer import HydraTree

CALLS: list[dict[str, Any]] = [
    {"tool": "Read", "target": "src/app.py"},
    {"tool": "Edit", "target": "src/app.py"},
    {"tool": "Write", "target": "docs/notes — été 日本.md"},
    {"tool": "Write", "target": 'tests/fixtures/"quoted" \\ name.json'},
    {"tool": "Grep", "target": ""},
    {"tool": "Glob", "target": ""},
    {"tool": "WebFetch", "target": ""},
    {"tool": "Bash", "target": "pytest -q tests/unit"},
    {"tool": "Bash", "target": "git status --short"},
    {"tool": "Bash", "target": "curl -s -H token=ghp_abcdefghijklmnopqrstuvwxyz0123456789 https://api.github.com/user"},
    {"tool": "Bash", "target": "OPENAI_API_KEY=sk-proj0123456789abcdefghij python3 ask.py"},
    {"tool": "Bash", "target": "echo sk-live0123456789abcdef | wc -c"},
    {"tool": "Bash", "target": "python3 -c 'print(" + "0123456789" * 25 + ")'"},
]
# A command action-guard records as action_blocked (advisory: the call still runs and is logged).
GUARDED_CALL: dict[str, Any] = {
    "tool": "Bash",
    "target": "rm -rf /",
    "guard": {
        "op_id": "rm-recursive-force-root",
        "severity": "critical",
        "category": "filesystem",
        "description": "Recursive force delete from filesystem root",
    },
}
SECRETS: list[dict[str, Any]] = [
    {"pattern_id": "aws-access-key-id", "severity": "critical", "masked": "AKIA...MPLE"},
    {"pattern_id": "github-pat", "severity": "critical", "masked": "ghp_...6789"},
    {"pattern_id": "stripe-test-key", "severity": "medium", "masked": "sk_t...wxyz"},
]
BLOCKED_HOSTS = ["evil.example", "pastebin.com", "exfil.attacker.test"]
# The first call writes GENESIS without a key; the second hashes a line and creates the key
# file. The plugin has a race there (two first hashes can each write a key, and one row is then
# hashed with a key that is overwritten): the simulator runs these calls alone.
FIRST_CALLS = 2
STRAY_LINE = '{"event":"tool_use","ts":"2026-05-14T10:00:00Z","tool":"Bash","target":"make te'


@dataclass
class SimReport:
    rows: int  # lines appended to the audit-trail file (the journal), rotated away or not
    planned_rows: int
    lines_in_file: int
    dropped: int  # calls whose append gave up on the lock, as the plugin does
    rotations: int
    tool_calls: int
    twins: int
    egress: int
    stray: int
    secrets: int
    guards: int
    key_source: str  # "env", "file" (hmac-key.bin) or "none" (plain SHA-256)


@dataclass
class Plan:
    first: list[dict[str, Any]]  # the calls that run alone, before the writers start
    writers: list[list[dict[str, Any]]]  # then each writer's calls, all writers at once
    counts: Counter[str] = field(default_factory=Counter)

    def report(self, tree: HydraTree, results: list[dict[str, int]], key: str | None) -> SimReport:
        lines = tree.audit.read_bytes().count(b"\n") if tree.audit.exists() else 0
        source = "env" if key else ("file" if tree.key_file.exists() else "none")
        c = self.counts
        return SimReport(
            rows=len(tree.journal_lines()),
            planned_rows=c["tool"] + 2 * c["twin"] + c["egress"] + c["stray"],
            lines_in_file=lines,
            dropped=sum(r["dropped"] for r in results),
            rotations=sum(r["rotations"] for r in results),
            tool_calls=c["tool"] + 2 * c["twin"],
            twins=c["twin"],
            egress=c["egress"],
            stray=c["stray"],
            secrets=c["secret"],
            guards=c["guard"],
            key_source=source,
        )


def make_plan(
    rows: int,
    writers: int,
    seed: int,
    egress_rate: float = 0.04,
    twin_rate: float = 0.05,
    stray_lines: int = 1,
    secret_rate: float = 0.3,
    guard_rate: float = 0.01,
) -> Plan:
    """About `rows` audit-trail lines as hook calls, dealt round-robin to `writers`."""
    rng = random.Random(seed)
    stray_at = {rows * (k + 1) // (stray_lines + 1) for k in range(stray_lines)}
    events: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    planned = 0
    while planned < rows:
        draw = rng.random()
        if planned in stray_at:
            event: dict[str, Any] = {"kind": "stray", "text": STRAY_LINE}
        elif draw < egress_rate:
            event = {"kind": "egress", "tool": "WebFetch", "host": rng.choice(BLOCKED_HOSTS), "allowlist_size": 3}
        else:
            kind = "twin" if draw < egress_rate + twin_rate and planned + 2 <= rows else "tool"
            event = {"kind": kind, **(GUARDED_CALL if rng.random() < guard_rate else rng.choice(CALLS))}
            if event["tool"] == "Write" and rng.random() < secret_rate:
                event["secret"] = {"line": rng.randrange(1, 200), **rng.choice(SECRETS)}
        counts[event["kind"]] += 1
        counts["secret"] += "secret" in event
        counts["guard"] += "guard" in event
        planned += 2 if event["kind"] == "twin" else 1
        events.append(event)
    for first in range(min(FIRST_CALLS, len(events))):
        # The first calls run alone (the second one creates the key file): plain tool calls.
        if events[first]["kind"] != "tool":
            counts[events[first]["kind"]] -= 1
            counts["tool"] += 2 if events[first]["kind"] == "twin" else 1
            if events[first]["kind"] == "twin":
                events.insert(first + 1, {"kind": "tool", **CALLS[0]})
            events[first] = {"kind": "tool", **CALLS[0]}
    rest = events[FIRST_CALLS:]
    return Plan(events[:FIRST_CALLS], [rest[i::writers] for i in range(writers)], counts)


def classify_links(lines: list[bytes], key: bytes | None) -> list[str]:
    """For each non-blank line, where its prev_hash points: "genesis", "above" (the line before
    it), "earlier" (an older line of this file), "unknown" (a line not in this file), or
    "unchained" (no prev_hash) and "not_json". Hashes as the producer does."""
    from .hydra_jq import canonical_line
    from .hydra_producer import link_hash

    seen: dict[str, int] = {}
    out: list[str] = []
    previous: str | None = None
    for index, line in enumerate(x for x in lines if x.strip(b" \t")):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        found = row.get("prev_hash") if isinstance(row, dict) else None
        if not isinstance(row, dict):
            out.append("not_json")
        elif found is None:
            out.append("unchained")
        elif found == "GENESIS":
            out.append("genesis")
        elif found == previous:
            out.append("above")
        else:
            out.append("earlier" if found in seen else "unknown")
        previous = link_hash(canonical_line(line), key)
        seen[previous] = index
    return out
