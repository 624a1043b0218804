"""Each way of tampering with a chained audit file, with the 1-based line a verifier must name
(shared by the `verify` command tests and the daemon's chain tests)."""

from __future__ import annotations

from typing import Any

import orjson

from audit_otlp.mapping.chain import GENESIS


def edited(line: bytes, **changes: Any) -> bytes:
    row = orjson.loads(line)
    row.update(changes)
    return orjson.dumps(row)


# Each tampering, with the 1-based line `verify` must name: the first line whose prev_hash
# does not match the row before it.
def tamper_edit(lines: list[bytes]) -> int:
    lines[9] = edited(lines[9], target="/etc/shadow")  # line 10 edited, its prev_hash intact
    return 11


def tamper_delete(lines: list[bytes]) -> int:
    del lines[9]  # line 10 removed: the old line 11 is now line 10
    return 10


def tamper_insert(lines: list[bytes]) -> int:
    lines.insert(9, edited(lines[9], target="injected", seq=999))  # a copy of line 10's links
    return 11  # the inserted row carries a valid prev_hash; the row after it breaks


def tamper_reorder(lines: list[bytes]) -> int:
    lines[9], lines[10] = lines[10], lines[9]
    return 10


def tamper_genesis(lines: list[bytes]) -> int:
    lines[9] = edited(lines[9], prev_hash=GENESIS)
    return 10


TAMPERINGS = {
    "edit": tamper_edit,
    "delete": tamper_delete,
    "insert": tamper_insert,
    "reorder": tamper_reorder,
    "genesis": tamper_genesis,
}
