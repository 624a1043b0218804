"""The verdict on one durable-resume scenario (tests/helpers/scenario.py): what arrived against
what had to, duplicates only across a kill and within the bound, no false chain break, and a
gap reported exactly when rows vanished while the daemon was stopped."""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.helpers.collector import attrs, seq_of

if TYPE_CHECKING:
    from tests.helpers.scenario import Scenario


@dataclass
class Outcome:
    name: str
    written: int = 0
    delivered: int = 0  # distinct rows acknowledged
    lost: int = 0  # rows that had to arrive and did not
    duplicated: int = 0  # extra acknowledgements beyond the first
    vanished_unseen: int = 0  # rows gone while the daemon was stopped (a real gap)
    kills: int = 0
    repeated_per_kill: list[int] = field(default_factory=list)
    lag_at_kills: list[int] = field(default_factory=list)
    lag_at_rotation: int | None = None
    gaps_expected: int = 0
    gaps_logged: int = 0
    chain_breaks: int = 0
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    def summary(scenario) -> str:
        return json.dumps(dict(scenario.__dict__), sort_keys=True)


def judge(scenario: Scenario, out: Outcome, delivered_all: bool) -> None:
    accepted = scenario.collector.accepted()
    counts = collections.Counter(scenario.collector.accepted_seqs())
    written = set(range(1, scenario.producer.written + 1))
    expected = scenario.expected()
    lost = sorted(expected - set(counts))
    out.written, out.delivered = len(written), len(set(counts) & written)
    out.lost, out.duplicated = len(lost), sum(c - 1 for c in counts.values())
    out.vanished_unseen, out.kills = len(scenario.gone), len(scenario.kills)
    out.lag_at_kills = [k.lag for k in scenario.kills]
    v = scenario.violations
    if lost:
        v.append(f"LOST {len(lost)} rows that were on disk while the daemon could see them, e.g. {_ranges(lost)}")
    if set(counts) - written:
        v.append(f"rows nobody wrote: {sorted(set(counts) - written)[:10]}")
    # Duplicates: only those a kill explains (rows acknowledged before it, repeated after it).
    explained = 0
    bounds = [k.request_index for k in scenario.kills] + [len(scenario.collector.requests)]
    for kill, end in zip(scenario.kills, bounds[1:]):
        again = [
            seq_of(s)
            for r in scenario.collector.requests[kill.request_index : end]
            if 200 <= r.status < 300
            for s in r.spans
            if seq_of(s) in kill.acked_before
        ]
        out.repeated_per_kill.append(len(again))
        explained += len(again)
        if len(again) > scenario.repeat_bound:
            v.append(f"a SIGKILL repeated {len(again)} rows (bound {scenario.repeat_bound})")
    if out.duplicated > explained:
        v.append(f"{out.duplicated - explained} rows delivered twice without a kill to explain it")
    # No false chain break.
    breaks = [
        s
        for s in (s for r in accepted for s in r.spans)
        if s.get("name") == "audit.chain_broken" or attrs(s).get("audit.chain.verdict") == "break"
    ]
    log_text = scenario.log.read_text(errors="replace")
    out.chain_breaks = max(len(breaks), log_text.count("HASH CHAIN"))
    if out.chain_breaks:
        v.append(f"{out.chain_breaks} chain breaks reported on an intact chain")
    _judge_gaps(scenario, out, accepted, expected, log_text)
    if not delivered_all and not lost:
        v.append("the wait for delivery timed out")


def _judge_gaps(scenario: Scenario, out: Outcome, accepted: list[Any], expected: set[int], log_text: str) -> None:
    v = scenario.violations
    out.gaps_expected = len(scenario.gaps)
    out.gaps_logged = log_text.count("RESUME GAP")
    if out.gaps_logged != out.gaps_expected:
        v.append(f"RESUME GAP logged {out.gaps_logged} times, expected {out.gaps_expected}")
    marked = {seq_of(s) for r in accepted for s in r.spans if attrs(s).get("audit.chain.verdict") == "gap"}
    firsts = {min((s for s in expected if s > last), default=None) for last in scenario.gaps} - {None}
    if marked != firsts:
        v.append(f"rows marked audit.chain.verdict=gap: {sorted(x for x in marked if x)[:5]}, expected {sorted(firsts)}")
    reported = scenario.status().get("resume_gaps", 0)
    if reported != out.gaps_expected:
        v.append(f"status --json resume_gaps is {reported!r}, expected {out.gaps_expected}")


def _ranges(seqs: list[int]) -> str:
    """1,2,3,7 -> '1-3, 7' (first few ranges)."""
    out: list[str] = []
    start = prev = seqs[0]
    for s in [*seqs[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        out.append(f"{start}-{prev}" if start != prev else str(start))
        if s is not None:
            start = prev = s
    return ", ".join(out[:6]) + (" ..." if len(out) > 6 else "")
