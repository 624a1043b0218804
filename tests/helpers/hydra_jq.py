"""How the hydra producer's tools print JSON, for the producer simulator (`hydra_sim`).

The producer builds rows with `jq -cn` (compact, keys in the order written) and hashes the
previous line as `jq -c -S .` prints it. This module reproduces Debian's jq 1.6 for the values
a producer row can hold (objects, arrays, strings, numbers, booleans, null), written from jq's
observed behaviour and checked against jq itself by tests/e2e/test_hydra_simulator.py. It is
deliberately independent of the daemon's own canonical code: it is the oracle that code is
tested against. Standard library only, so the simulator runs as a plain script.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_DBL_MAX = 1.7976931348623157e308
JSON_WHITESPACE = b" \t\r\n"


class NotLikeJq(ValueError):
    """A line whose jq output this module does not reproduce (the simulator never writes one)."""


def jq_number(value: float) -> str:
    """A double as jq 1.6 prints it: the shortest digits that read back, in plain notation
    unless the decimal point lies 4 or more places left of them or over 15 places right."""
    if math.isnan(value):
        return "null"
    if math.isinf(value):
        value = math.copysign(_DBL_MAX, value)
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    mantissa, _, power = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    padded = whole + fraction
    digits = padded.lstrip("0")
    # value == 0.<digits> * 10**point
    point = len(whole) + (int(power) if power else 0) - (len(padded) - len(digits))
    digits = digits.rstrip("0")
    if point <= -4 or point > len(digits) + 15:
        power_of_ten = point - 1
        shown = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{shown}e{'-' if power_of_ten < 0 else '+'}{abs(power_of_ten):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


def jq_string(text: str) -> str:
    # jq escapes what JSON requires plus DEL, and writes every other character as it is.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def jq_compact(value: Any, sort_keys: bool = False) -> str:
    """`value` as `jq -c` (or with sort_keys, `jq -c -S`) prints it, without the newline."""
    if isinstance(value, dict):
        items = sorted(value.items()) if sort_keys else list(value.items())
        return "{" + ",".join(jq_string(k) + ":" + jq_compact(v, sort_keys) for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(jq_compact(v, sort_keys) for v in value) + "]"
    if isinstance(value, str):
        return jq_string(value)
    if value is True or value is False or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int):
        # jq 1.6 holds every number as a double.
        if abs(value) < 2**53:
            return str(value)
        return jq_number(float(value) if abs(value) < 2**1024 else math.copysign(math.inf, value))
    if isinstance(value, float):
        return jq_number(value)
    raise TypeError(f"not a JSON value: {type(value).__name__}")


# Forms jq 1.6 reads although JSON does not (a BOM, numbers such as 01, .5, 1., +1): a line
# that only fails to parse because of one of them is not known to be raw bytes for jq.
_LENIENT_JQ = re.compile(r"\ufeff|(?:^|[:\[,])\s*(?:[+.]|-?0\d)|\d\.(?!\d)|\bnan\b", re.IGNORECASE)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _jq_int(literal: str) -> float | int:
    # jq reads every number as a double: the literal -0 is negative zero.
    return -0.0 if literal == "-0" else int(literal)


def _reject_surrogates(value: Any) -> None:
    if isinstance(value, str) and any("\ud800" <= c <= "\udfff" for c in value):
        raise NotLikeJq("a lone surrogate escape (jq rejects some, replaces others)")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_surrogates(key)
            _reject_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _reject_surrogates(item)


def canonical_line(line: bytes) -> bytes:
    """What the producer hashes for a previous line: `jq -c -S .` of it when jq reads it, else
    the line's raw bytes (chain-helpers.sh falls back to them when jq fails)."""
    if not line.strip(JSON_WHITESPACE):
        return b""  # jq reads no value and prints nothing, successfully
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotLikeJq("jq replaces invalid UTF-8 its own way") from exc
    try:
        value = json.loads(text, parse_int=_jq_int)  # NaN and Infinity: jq reads them too
    except ValueError:
        if _LENIENT_JQ.search(_STRING.sub('""', text)):
            raise NotLikeJq("a line jq may read although JSON does not") from None
        try:
            json.JSONDecoder().raw_decode(text.lstrip(" \t\r\n"))
        except ValueError:
            return line  # jq fails on it too: the producer hashes the raw bytes
        # jq prints every value of a line holding several, and fails after a trailing rest.
        raise NotLikeJq("a line that starts with a JSON value followed by more") from None
    _reject_surrogates(value)
    return jq_compact(value, sort_keys=True).encode("utf-8")
