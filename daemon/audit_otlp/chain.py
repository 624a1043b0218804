"""The audit log's hash chain: canonical JSON as `jq -c -S` prints it, the row hash, and a
streaming verifier. Everything here is pure (no I/O), so the daemon and `verify` share it.

Canonical JSON follows Debian's jq 1.6: keys sorted by code point, no whitespace, non-ASCII
text raw, control characters and DEL escaped, and every number printed as jq prints a double
(shortest round-trip digits; 1.0 -> 1, 1e3 -> 1000, 1e16 -> 1e+16, 1e-5 -> 1e-05).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any

import orjson

GENESIS = "GENESIS"
_EXACT_INT_LIMIT = 2**53  # beyond this jq's doubles no longer hold every integer
_DBL_MAX = 1.7976931348623157e308


def _jq_number(value: float) -> str:
    """Format a double the way jq 1.6's jvp_dtoa_fmt does."""
    if value != value:  # NaN: jq prints null
        return "null"
    if math.isinf(value):
        value = math.copysign(_DBL_MAX, value)
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    # Shortest round-trip digits (Python's repr, like jq's dtoa mode 0) and the decimal point's
    # position relative to them.
    mantissa, _, exp = repr(abs(value)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    decpt = len(int_part) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    decpt -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    if decpt <= -4 or decpt > len(digits) + 15:
        e = decpt - 1
        text = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{text}e{'-' if e < 0 else '+'}{abs(e):02d}"
    if decpt <= 0:
        return f"{sign}0.{'0' * -decpt}{digits}"
    if decpt >= len(digits):
        return f"{sign}{digits}{'0' * (decpt - len(digits))}"
    return f"{sign}{digits[:decpt]}.{digits[decpt:]}"


def _jq_string(value: str) -> str:
    # json.dumps escapes the same set as jq except DEL, which jq writes as \u007f; lone
    # surrogates (invalid UTF-16 escapes) become U+FFFD as jq does.
    text = json.dumps(value, ensure_ascii=False)
    if "\x7f" in text:
        text = text.replace("\x7f", "\\u007f")
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        text = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text


def _slow_canonical(value: Any) -> str:
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(_jq_string(k) + ":" + _slow_canonical(v) for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_slow_canonical(v) for v in value) + "]"
    if isinstance(value, str):
        return _jq_string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        if -_EXACT_INT_LIMIT < value < _EXACT_INT_LIMIT and abs(value) < 10**16:
            return str(value)
        return _jq_number(float(value)) if abs(value) < 2**1024 else _jq_number(math.copysign(math.inf, value))
    if isinstance(value, float):
        return _jq_number(value)
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _orjson_safe(value: Any) -> bool:
    """True when orjson's sorted output is byte-for-byte what jq prints (no floats, small ints,
    no DEL or lone surrogates in strings)."""
    t = type(value)
    if t is str:
        return "\x7f" not in value
    if t is int:
        return -_EXACT_INT_LIMIT < value < _EXACT_INT_LIMIT
    if t is dict:
        return all(_orjson_safe(k) and _orjson_safe(v) for k, v in value.items())
    if t is list:
        return all(_orjson_safe(v) for v in value)
    return value is None or t is bool


def canonical_json(row: Any) -> bytes:
    """The row exactly as `jq -c -S` prints it, without the trailing newline."""
    if _orjson_safe(row):
        try:
            return orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # lone surrogates and the like
            pass
    return _slow_canonical(row).encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class ChainHasher:
    """base64(SHA-256(canonical)) or, with a key, base64(HMAC-SHA256(key, canonical))."""

    key: bytes | None = None

    def row_hash(self, row: Any) -> str:
        canonical = canonical_json(row)
        if self.key is None:
            digest = hashlib.sha256(canonical).digest()
        else:
            digest = hmac.new(self.key, canonical, hashlib.sha256).digest()
        return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class ChainVerdict:
    """What the verifier concluded about one row."""

    verified: bool | None  # None: the row has no prev_hash and is not part of a chain
    row_hash: str
    expected: str | None  # the prev_hash this row should have carried
    found: str | None  # the prev_hash it carries
    restart: bool = False  # a GENESIS row after the chain had begun

    @property
    def broken(self) -> bool:
        return self.verified is False


@dataclass
class ChainState:
    """The verifier's memory: the hash of the last row seen (None before the first row)."""

    last_hash: str | None = None
    rows: int = 0
    breaks: int = 0


def verify_row(state: ChainState, row: Any, hasher: ChainHasher) -> ChainVerdict:
    """Check `row` against the row before it and advance `state` (the only mutation here)."""
    row_hash = hasher.row_hash(row)
    found = row.get("prev_hash") if isinstance(row, dict) else None
    expected = state.last_hash if state.last_hash is not None else GENESIS
    if found is None:
        verdict = ChainVerdict(None, row_hash, None, None)
    elif not isinstance(found, str):
        verdict = ChainVerdict(False, row_hash, expected, repr(found))
    elif found == GENESIS:
        # The first row of a chain; in mid-stream it restarts the chain, which is reported.
        restart = state.last_hash is not None
        verdict = ChainVerdict(not restart, row_hash, expected, found, restart=restart)
    elif state.last_hash is None:
        # We start mid-chain (start_at=end, or a checkpoint without chain state): nothing to
        # compare against, so the row is accepted as the anchor.
        verdict = ChainVerdict(True, row_hash, None, found)
    else:
        verdict = ChainVerdict(found == expected, row_hash, expected, found)
    state.last_hash = row_hash
    state.rows += 1
    if verdict.broken:
        state.breaks += 1
    return verdict
