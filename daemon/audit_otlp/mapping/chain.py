"""The audit log's hash chain: the row hash (SHA-256 or HMAC over canonical JSON), the verdict on
each row, and the streaming state the daemon and `verify` share. Pure (no I/O)."""

from __future__ import annotations

import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

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


class ChainVerdict(NamedTuple):
    """What the verifier concluded about one row (a NamedTuple: one is made per row, and a
    frozen dataclass costs several times more to build)."""

    verified: bool | None  # None: the row has no prev_hash and is not part of a chain
    row_hash: str
    expected: str | None  # the prev_hash this row should have carried
    found: str | None  # the prev_hash it carries
    restart: bool = False  # a GENESIS row after the chain had begun
    anchor: bool = False  # the first row seen continues a chain we have no hash for: unchecked
    resumed: bool = False  # links to the row before a broken one (which was out of chain)
    gap: bool = False  # the rows before it vanished unseen (a resume gap): it cannot be verified

    @property
    def broken(self) -> bool:
        return self.verified is False and not self.gap

    @property
    def kind(self) -> str:
        """Low-cardinality name of a break: "restart" (GENESIS mid-stream) or "mismatch"."""
        return "restart" if self.restart else "mismatch"


@dataclass
class ChainState:
    """The verifier's memory. `last_hash` (the hash of the last chained row; None before the
    first) is all that must survive a restart; the rest only sharpens reports mid-stream."""

    last_hash: str | None = None
    rows: int = 0
    breaks: int = 0
    before_last_hash: str | None = None  # the hash of the row before the last one
    last_broken: bool = False  # the last row was a break


def verify_row(state: ChainState, row: Any, hasher: ChainHasher, data: bytes | None = None) -> ChainVerdict:
    """Check `row` (parsed from `data`, when given) against the row before it and advance
    `state`. See `judge` for what "expected" means after a break."""
    row_hash = hasher.line_hash(data, row) if data is not None else hasher.row_hash(row)
    return judge(state, row.get("prev_hash") if type(row) is dict else None, row_hash)


def judge(state: ChainState, found: Any, row_hash: str) -> ChainVerdict:
    """The verdict on a row whose prev_hash is `found` and whose own hash is `row_hash`, and
    `state` advanced past it (the only mutation here).

    After a break the verifier re-anchors on the row it found: the next row is checked against
    this row's hash, so one edited, deleted or inserted row gives one break, not a cascade:
      - edited row k: row k+1 breaks (its prev_hash is the hash of the original row k);
      - deleted row k: the row after the gap breaks (its prev_hash is the missing row's hash);
      - inserted row x: x breaks if its prev_hash is wrong, and the row after it, which links
        to the row before x, is accepted as resuming the chain; if x's prev_hash was forged
        right, the row after x breaks;
      - reordered rows: the first displaced row breaks.
    """
    last = state.last_hash
    if found is None:
        # Not part of the chain; the chain skips it, so the next chained row is compared with
        # the last chained row.
        return ChainVerdict(None, row_hash, None, None)
    if type(found) is not str:
        verdict = ChainVerdict(False, row_hash, last or GENESIS, json.dumps(found))
    elif found == last:
        verdict = ChainVerdict(True, row_hash, last, found)
    elif last is None:
        # Nothing to compare against: the very first row, or we start mid-chain (start_at=end,
        # a single rotated file): a GENESIS row starts the chain, anything else is its anchor.
        verdict = ChainVerdict(True, row_hash, GENESIS if found == GENESIS else None, found, anchor=found != GENESIS)
    elif found == GENESIS:
        verdict = ChainVerdict(False, row_hash, last, found, restart=True)
    elif state.last_broken and found == state.before_last_hash:
        # The row before this one broke, and this row links to the row before *that*: the
        # broken row was inserted; the chain resumes here.
        verdict = ChainVerdict(True, row_hash, last, found, resumed=True)
    else:
        verdict = ChainVerdict(False, row_hash, last, found)
    state.before_last_hash = last
    state.last_hash = row_hash
    state.last_broken = verdict.verified is False
    state.rows += 1
    if state.last_broken:
        state.breaks += 1
    return verdict
