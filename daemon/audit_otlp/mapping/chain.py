"""The audit log's hash chain: the link hash of every line (SHA-256 or HMAC over canonical JSON,
or over the raw bytes of a line that is not JSON), the verdict on each line, and the streaming
state the daemon and `verify` share. Pure (no I/O).

Every line is a link, as the producer hashes it: a row without prev_hash and a line that is not
JSON are "unchained" themselves, and the line after them is checked against their hash. The
verdicts (interface.md, "Spans"):
  ok         prev_hash is the hash of the line just before;
  fork       prev_hash names an earlier line of the last FORK_WINDOW (the hydra producer hashes
             the last line before it takes its lock, so parallel writers point at the same
             parent or an older one), or the same missing parent as an earlier break;
  unchained  no prev_hash (or not JSON): its own back-link cannot be checked;
  restart    GENESIS after the chain had begun;
  gap        the lines before it were never seen (the first line read mid-chain, the lines
             shortly after it whose parents are older still, the first line after a resume gap);
  break      anything else: an edited, deleted or inserted line, or a line from another chain.
A fork cannot be told apart from a row inserted with a copied prev_hash: both name a real
earlier line. Tampering shows as a break on the first row that names the original of an edited
row, or on the row after a deleted one; the rows that name the same missing parent later are
forks of that break, so one tampering gives one break.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, NamedTuple

import orjson

from audit_otlp.mapping.canonical import canonical_json, canonical_line

GENESIS = "GENESIS"


@dataclass(frozen=True)
class ChainHasher:
    """base64(SHA-256(canonical)) or, with a key, base64(HMAC-SHA256(key, canonical))."""

    key: bytes | None = None

    def __post_init__(self) -> None:
        # HMAC (RFC 2104) from precomputed inner and outer SHA-256 states: the same digest as
        # hmac.digest, at half the cost per row.
        if self.key is not None:
            block = self.key if len(self.key) <= 64 else hashlib.sha256(self.key).digest()
            block = block.ljust(64, b"\0")
            object.__setattr__(self, "_inner", hashlib.sha256(bytes(b ^ 0x36 for b in block)))
            object.__setattr__(self, "_outer", hashlib.sha256(bytes(b ^ 0x5C for b in block)))

    def __repr__(self) -> str:
        return f"ChainHasher(key={'***' if self.key is not None else None})"  # never the key

    def __reduce__(self) -> tuple[type[ChainHasher], tuple[bytes | None]]:
        # To the mapping helper process: the key, not the hash states (which cannot be pickled).
        return ChainHasher, (self.key,)

    def hash_canonical(self, canonical: bytes) -> str:
        if self.key is None:
            digest = hashlib.sha256(canonical).digest()
        else:
            inner = self._inner.copy()  # type: ignore[attr-defined]
            inner.update(canonical)
            outer = self._outer.copy()  # type: ignore[attr-defined]
            outer.update(inner.digest())
            digest = outer.digest()
        return binascii.b2a_base64(digest, newline=False).decode("ascii")

    def row_hash(self, row: Any) -> str:
        return self.hash_canonical(canonical_json(row))

    def line_hash(self, data: bytes, row: Any) -> str:
        """The hash of a line already parsed into `row` (see `canonical_line`)."""
        return self.hash_canonical(canonical_line(data, row))


OK, FORK, UNCHAINED, RESTART, GAP, BREAK = "ok", "fork", "unchained", "restart", "gap", "break"
VERDICTS = (OK, FORK, UNCHAINED, RESTART, GAP, BREAK)
FORK_WINDOW = 1000  # link hashes a fork may point back to (the producer's rotation keeps 1000 lines)
# After a point where the lines before were not seen, this many lines may still name a parent
# from before it (a fork older than what we saw): those are gaps, not breaks.
GAP_HORIZON = 64
CARRIED_LINKS = 64  # link hashes a restart needs to judge the first rows as before (checkpoint)
# With no key, this many failed links before any has matched mean the chain is keyed (HMAC).
KEYED_EVIDENCE = 3
# The producer hashes the last line as it reads it while others append: a line that crosses a
# page boundary can be read cut at that boundary (the file's size grows a page at a time during
# a write), and the next row names the hash of the cut line. Recent lines checked for that.
TORN_LINES = 8
PAGE_SIZES = (4096, 16384)


class ChainVerdict(NamedTuple):
    """What the verifier concluded about one line (a NamedTuple: one is made per line)."""

    verdict: str  # one of VERDICTS
    row_hash: str  # this line's link hash
    expected: str | None  # the hash of the line before it (what an `ok` row carries)
    found: str | None  # the prev_hash it carries
    anchor: bool = False  # the first line seen continues a chain we have no hash for

    @property
    def verified(self) -> bool:
        return self.verdict == OK

    @property
    def broken(self) -> bool:
        return self.verdict == BREAK


@dataclass
class ChainState:
    """The verifier's memory, bounded: the last line's hash, the recent link hashes (forks),
    and how many lines have been seen since the history last began."""

    last_hash: str | None = None
    rows: int = 0
    breaks: int = 0
    forks: int = 0
    seen: int = 0  # lines with a known hash since the history began (at most GAP_HORIZON)
    gap_pending: bool = False  # the next line follows lines that vanished unseen
    matched: int = 0  # links that matched a line's hash: evidence the key is right
    # Link hashes, oldest first, FORK_WINDOW at most. An OrderedDict, not a dict: dropping a
    # dict's first key scans the deleted slots before it (~1 µs a line at FORK_WINDOW).
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    missing: dict[str, None] = field(default_factory=dict)  # parents named by breaks, GAP_HORIZON at most
    lines: deque[tuple[int, bytes]] = field(default_factory=lambda: deque(maxlen=TORN_LINES))  # (offset, bytes)

    @classmethod
    def resumed(cls, last_hash: str | None, recent: Iterable[str] = (), seen: int | None = None) -> ChainState:
        """The state a restart continues from: the checkpoint's last hash, carried links and
        history length (an older checkpoint has only the last hash)."""
        state = cls(last_hash=last_hash)
        for link in recent:
            state.remember(link)
        if last_hash is not None:
            state.remember(last_hash)
            state.seen = min(len(state.recent) if seen is None else seen, GAP_HORIZON)
        return state

    def remember(self, link: str) -> None:
        recent = self.recent
        if link in recent:
            recent.move_to_end(link)
        else:
            recent[link] = None
            if len(recent) > FORK_WINDOW:
                recent.popitem(last=False)

    def mark_gap(self) -> None:
        """Lines vanished unseen before the next one (the resume code calls this)."""
        self.gap_pending = True
        self.seen = 0

    def carried(self) -> list[str]:
        """The recent link hashes a restart needs (oldest first), for the checkpoint."""
        newest = list(islice(reversed(self.recent), CARRIED_LINKS))
        newest.reverse()
        return newest


def judge_link(state: ChainState, found: Any, link_hash: str) -> ChainVerdict:
    """The verdict on a line whose prev_hash is `found` (None: no prev_hash, or not JSON) and
    whose own link hash is `link_hash`; `state` advances past it (the only mutation here)."""
    last = state.last_hash
    if found == last and found is not None and found != GENESIS:
        # The verdict on almost every line, taken straight to the state changes the general
        # path below makes for it.
        state.matched += 1
        state.gap_pending = False
        seen = state.seen
        state.seen = seen + 1 if seen < GAP_HORIZON else GAP_HORIZON
        state.remember(link_hash)
        state.last_hash = link_hash
        state.rows += 1
        return ChainVerdict(OK, link_hash, last, found if type(found) is str else None)
    anchor = False
    if found == last and found is not None:
        verdict = OK
        state.matched += 1
    elif found == GENESIS:
        verdict = OK if last is None else RESTART
    elif state.gap_pending:
        verdict = GAP
    elif found is None:
        verdict = UNCHAINED
    elif type(found) is not str:
        verdict = BREAK
        found = json.dumps(found)
    elif last is None:
        verdict, anchor = GAP, True  # the first line read continues an earlier chain
    elif found in state.recent:
        verdict = FORK
        state.matched += 1
    elif found in state.missing:
        verdict = FORK  # a sibling of a break: the same missing parent
    elif state.seen < GAP_HORIZON:
        verdict = GAP  # names a line from before the history we have
    else:
        verdict = BREAK
    if verdict == BREAK:
        state.breaks += 1
        state.missing[found] = None  # later rows naming the same missing parent are forks of it
        if len(state.missing) > GAP_HORIZON:
            del state.missing[next(iter(state.missing))]
    elif verdict == FORK:
        state.forks += 1
    state.gap_pending = False
    # From a GENESIS row on, the whole chain is known; otherwise history grows line by line.
    state.seen = GAP_HORIZON if found == GENESIS else min(state.seen + 1, GAP_HORIZON)
    state.remember(link_hash)
    state.last_hash = link_hash
    state.rows += 1
    return ChainVerdict(verdict, link_hash, last, found if type(found) is str else None, anchor)


class ChainJudge:
    """`judge_link` with what a missing key looks like. Without a key a failed link proves
    little until one has matched: it is a gap, not a break; KEYED_EVIDENCE of them before any
    match mean the chain is keyed (`looks_keyed`), and it cannot be checked at all."""

    def __init__(self, state: ChainState, hasher: ChainHasher) -> None:
        self.state = state
        self.hasher = hasher
        self.unproven = hasher.key is None
        self.failures = 0
        self.looks_keyed = False

    def judge(self, found: Any, link_hash: str, offset: int | None = None, data: bytes | None = None) -> ChainVerdict:
        """The verdict on a line (at `offset`, with its bytes `data` when known: a torn read of
        it can then be recognised in a later row)."""
        state = self.state
        verdict = judge_link(state, found, link_hash)
        if verdict.verdict in (BREAK, GAP) and not verdict.anchor and type(found) is str and self._torn(found):
            if verdict.verdict == BREAK:
                state.breaks -= 1
                state.missing.pop(found, None)
            state.forks += 1
            state.matched += 1
            verdict = verdict._replace(verdict=FORK)
        if offset is not None and data is not None:
            state.lines.append((offset, data))
        if not self.unproven:
            return verdict
        if state.matched:
            self.unproven = False  # plain SHA-256 links match: the chain is not keyed
        elif verdict.verdict == BREAK or (verdict.verdict == GAP and not verdict.anchor and found is not None):
            self.failures += 1
            if verdict.verdict == BREAK:
                state.breaks -= 1
                verdict = verdict._replace(verdict=GAP)
            self.looks_keyed = self.failures >= KEYED_EVIDENCE
        return verdict

    def _torn(self, found: str) -> bool:
        """Does `found` name a recent line as the producer may have read it, cut at a page?"""
        for offset, data in self.state.lines:
            for page in PAGE_SIZES:
                cut = page - offset % page
                if 0 < cut < len(data) and unparsed_link(self.hasher, data[:cut], False) == found:
                    return True
        return False


def unparsed_link(hasher: ChainHasher, data: bytes, deep: bool) -> str:
    """The link hash of a line that is not a JSON object, as the producer computes it (jq, or the
    raw bytes when jq cannot read it): the canonical form of a JSON value that is not an object
    (jq refuses more than 256 levels: `deep`), else the raw bytes."""
    if not deep:
        try:
            return hasher.hash_canonical(canonical_json(orjson.loads(data)))
        except (orjson.JSONDecodeError, TypeError, RecursionError):
            pass
    return hasher.hash_canonical(data)


def verify_row(state: ChainState, row: Any, hasher: ChainHasher, data: bytes | None = None) -> ChainVerdict:
    """`judge_link` for a parsed row (from the line `data`, when given)."""
    link = hasher.line_hash(data, row) if data is not None else hasher.row_hash(row)
    return judge_link(state, row.get("prev_hash") if type(row) is dict else None, link)
