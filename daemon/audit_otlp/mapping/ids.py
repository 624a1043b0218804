"""Span and trace ids derived from content, never from time or randomness: the same row always
gives the same ids, so a span delivered twice after a crash is recognisably the same span."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass(frozen=True)
class MappingOptions:
    trace_id_from: str = "prev_hash"  # or "session"


def nonzero_hex(raw: bytes) -> str:
    if not any(raw):  # all-zero ids are invalid in OTLP and W3C
        raw = raw[:-1] + b"\x01"
    return raw.hex()


def line_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def span_id_for(digest: bytes) -> str:
    return nonzero_hex(digest[:8])


def trace_id_for(row: Mapping[str, Any], digest: bytes, options: MappingOptions) -> str:
    own = row.get("trace_id")
    if isinstance(own, str) and _HEX32.match(own) and own.strip("0"):
        return own.lower()
    if options.trace_id_from == "session":
        session = row.get("session_id")
        if isinstance(session, str) and session:
            return _session_trace_id(session)
    prev = row.get("prev_hash")
    if isinstance(prev, str) and prev:
        return nonzero_hex(hashlib.sha256(b"prev_hash:" + prev.encode("utf-8", "replace")).digest()[:16])
    return nonzero_hex(digest[8:24])


@functools.lru_cache(maxsize=256)
def _session_trace_id(session: str) -> str:
    # A session spans many rows in a row: hash it once (a pure function of the session).
    return nonzero_hex(hashlib.sha256(b"session:" + session.encode("utf-8", "replace")).digest()[:16])
