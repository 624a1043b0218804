"""Byte-identical lines get distinct span ids, the same ids on every replay (the window is
carried in the checkpoint), and a GENESIS row gets a trace of its own chain."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from audit_otlp.mapping.chain import ChainHasher, ChainState
from audit_otlp.mapping.ids import IDENTICAL_WINDOW, IdentityWindow, MappingOptions
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.source.lines import Line

TWIN = b'{"event":"tool_use","ts":"2026-05-14T10:00:01Z","tool":"Grep","target":"","prev_hash":"AAAA"}'
OTHER = b'{"event":"tool_use","ts":"2026-05-14T10:00:02Z","tool":"Read","target":"a.py","prev_hash":"BBBB"}'


class Quiet:
    def malformed_line(self, reason: str) -> None: ...
    def chain_break(self, verdict: Any, offset: int, line_number: int) -> None: ...
    def chain_fork(self) -> None: ...
    def chain_note(self, message: str) -> None: ...


def span_ids(lines: list[bytes], identity: IdentityWindow | None = None) -> list[str]:
    mapper = RowMapper(MappingOptions(), ChainHasher(), ChainState(), Quiet(), identity=identity)
    out, offset = [], 0
    for data in lines:
        line = Line(offset, offset + len(data) + 1, data)
        offset = line.end
        out.append(orjson.loads(mapper.map_line(line, 1).spans[0])["spanId"])
    return out


def test_identical_lines_get_distinct_ids_and_a_unique_line_keeps_its_old_id() -> None:
    ids = span_ids([TWIN, TWIN, OTHER, TWIN])
    assert len(set(ids)) == 4
    assert ids[2] == span_ids([OTHER])[0]  # no twin before it: the id it always had


def test_a_restart_with_the_carried_window_gives_the_same_ids() -> None:
    lines = [TWIN, OTHER, TWIN, TWIN, OTHER]
    first = span_ids(lines)
    window = IdentityWindow()
    for data in lines[:3]:  # what the checkpoint carries after line 3
        window.occurrence(hashlib.sha256(data).digest())
    carried = IdentityWindow(bytes.fromhex(d) for d in window.carried())
    assert span_ids(lines[3:], carried) == first[3:]
    assert span_ids(lines[3:]) != first[3:]  # without the window the replay would collide


def test_the_window_is_bounded() -> None:
    window = IdentityWindow()
    digest = b"\x01" * 32
    assert window.occurrence(digest) == 0
    for i in range(IDENTICAL_WINDOW):
        window.occurrence(i.to_bytes(32, "big"))
    assert window.occurrence(digest) == 0 and len(window.carried()) == IDENTICAL_WINDOW


def test_each_chain_s_first_row_has_its_own_trace() -> None:
    first_rows = [
        b'{"event":"tool_use","ts":"2026-05-14T10:00:00Z","tool":"Bash","prev_hash":"GENESIS","host":"%d"}' % i for i in range(2)
    ]
    mapper = RowMapper(MappingOptions(), ChainHasher(b"k"), ChainState(), Quiet())
    traces = {orjson.loads(mapper.map_line(Line(0, len(d) + 1, d), 1).spans[0])["traceId"] for d in first_rows}
    assert len(traces) == 2 and not any(t.startswith("49e6296c") for t in traces)
