"""Canonical JSON as `jq -c -S` prints it (Debian's jq 1.6), the text every chain hash is taken
over: keys sorted by code point, no whitespace, non-ASCII text raw, control characters and DEL
escaped, and every number printed as jq prints a double (shortest round-trip digits; 1.0 -> 1,
1e3 -> 1000, 1e16 -> 1e+16, 1e-5 -> 1e-05). Pure."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

_EXACT_INT_LIMIT = 2**53  # beyond this jq's doubles no longer hold every integer
_DBL_MAX = 1.7976931348623157e308
_SURROGATES = re.compile("[\ud800-\udfff]")
# Where an integer -0 may stand as a JSON value ("-0" then `,` `]` or `}`). A match inside a
# string only costs the slow path; a leading literal keeps the search fast.
_NEGATIVE_ZERO = re.compile(rb"-0\s*[,\]}]")
# Value types orjson prints as jq does (integers up to 2**53 in magnitude: OPT_STRICT_INTEGER
# refuses the others, at C speed); floats and nested values take the careful paths.
_PLAIN_TYPES = frozenset((str, bool, int, type(None)))
_SORTED_STRICT = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


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
    # json.dumps escapes the same set as jq except DEL, which jq writes as \u007f; a lone
    # surrogate (an unpaired \udc00 escape) becomes U+FFFD as jq makes it.
    text = json.dumps(value, ensure_ascii=False)
    if "\x7f" in text:
        text = text.replace("\x7f", "\\u007f")
    return text


def _jq_text(value: str) -> str:
    """The string as jq holds it: lone surrogates replaced by U+FFFD (before any sorting)."""
    if _SURROGATES.search(value) is None:
        return value
    return _SURROGATES.sub("\ufffd", value)


def _slow_canonical(value: Any) -> str:
    if isinstance(value, dict):
        # Keys are compared as jq stores them (UTF-8 bytes, which sort like code points), so
        # the U+FFFD replacement comes first; a key repeated after replacement keeps its last value.
        items = sorted({_jq_text(k): v for k, v in value.items()}.items())
        return "{" + ",".join(_jq_string(k) + ":" + _slow_canonical(v) for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_slow_canonical(v) for v in value) + "]"
    if isinstance(value, str):
        return _jq_string(_jq_text(value))
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        if -_EXACT_INT_LIMIT < value < _EXACT_INT_LIMIT:
            return str(value)
        try:
            return _jq_number(float(value))
        except OverflowError:  # beyond any double: jq prints the largest one
            return _jq_number(math.inf if value > 0 else -math.inf)
    if isinstance(value, float):
        return _jq_number(value)
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _parse_int_keeping_negative_zero(text: str) -> int | float:
    # jq reads every number as a double, so the integer literal -0 is negative zero for it.
    return -0.0 if text == "-0" else int(text)


class _Unrepresentable(Exception):
    pass


def _for_orjson(value: Any) -> Any:
    """`value` itself when orjson's sorted output is what jq prints, else a copy that orjson
    prints as jq would (integral floats such as 3.0, which jq prints as 3, become ints). Raises
    _Unrepresentable for what only the slow printer gets right: exponent forms (1e-05, 1e+16),
    -0.0 and 0.0, integers beyond 2**53. Strings are checked on the output (DEL) and by orjson
    (lone surrogates). One flat pass, no copy in the common case: this runs for every row."""
    changed: Any = None
    for key, v in value.items() if type(value) is dict else enumerate(value):
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if -_EXACT_INT_LIMIT < v < _EXACT_INT_LIMIT:
                continue
            raise _Unrepresentable
        if t is float:
            if 1e-4 <= abs(v) < 1e15 and not v.is_integer():
                continue  # orjson prints these exactly as jq (shortest digits, no exponent)
            if not (v.is_integer() and 0 < abs(v) < _EXACT_INT_LIMIT):
                raise _Unrepresentable
            new: Any = int(v)
        elif t is dict or t is list:
            new = _for_orjson(v)
            if new is v:
                continue
        else:
            raise _Unrepresentable
        if changed is None:
            changed = dict(value) if type(value) is dict else list(value)
        changed[key] = new
    return value if changed is None else changed


def _plain_canonical(row: dict[str, Any]) -> bytes:
    """Canonical JSON of a flat row of plain values (_PLAIN_TYPES): orjson's sorted output is
    jq's, unless it refuses the row (lone surrogates, integers beyond 2**53) or has a DEL
    (which jq escapes, checked on the output)."""
    try:
        out = orjson.dumps(row, option=_SORTED_STRICT)
    except TypeError:
        pass
    else:
        if b"\x7f" not in out:
            return out
    return _slow_canonical(row).encode("utf-8", "surrogatepass")


def canonical_json(row: Any) -> bytes:
    """The row exactly as `jq -c -S` prints it, without the trailing newline."""
    if type(row) is dict and set(map(type, row.values())) <= _PLAIN_TYPES:
        return _plain_canonical(row)  # fastest path, no copy and no recursion: almost every row
    if type(row) is dict or type(row) is list:
        # Fast path: orjson, when its output is jq's (checked on the values, and on the output
        # for DEL, which jq escapes); rows with integral floats are converted first.
        try:
            out = orjson.dumps(_for_orjson(row), option=orjson.OPT_SORT_KEYS)
        except (TypeError, _Unrepresentable):  # TypeError: lone surrogates
            pass
        else:
            if b"\x7f" not in out:
                return out
    return _slow_canonical(row).encode("utf-8", "surrogatepass")


def canonical_line(data: bytes, row: Any) -> bytes:
    """Canonical JSON of a line already parsed into `row`. The line's text is needed for one
    case its value loses: the integer literal -0, which jq keeps as -0."""
    if type(row) is dict:
        # Every producer row: flat and plain. Its text is searched for -0 only when a value
        # equals 0 (0, False): in a flat row an integer -0 can only stand as a value.
        values = row.values()
        if set(map(type, values)) <= _PLAIN_TYPES and (0 not in values or _NEGATIVE_ZERO.search(data) is None):
            return _plain_canonical(row)
    if _NEGATIVE_ZERO.search(data) is not None:
        try:
            return _slow_canonical(json.loads(data, parse_int=_parse_int_keeping_negative_zero)).encode("utf-8", "surrogatepass")
        except ValueError:
            pass
    return canonical_json(row)
