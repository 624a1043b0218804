"""Per-row cost of each stage of the mapping path, and of faster variants (sketches).

    python -m tests.benchmarks.stages [--rows 20000]

Prints microseconds per row for what the daemon does today (parse, line digest, chain hash,
row_span + encode, the whole RowMapper.map_line) and for the sketches below, each checked to
give byte-for-byte the same output as today's code on the generated rows. The sketches are
evidence for recommendations to mapping.py / chain.py, not code the daemon uses.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

import orjson

from audit_otlp.mapping import canonical, chain, envelope, ids, parse
from audit_otlp.mapping import spans as span_building  # `spans` is a local name below
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.source.lines import LineSplitter
from tests.benchmarks.gen import RowGenerator

# -- sketch 1: the chain's "can orjson print this like jq?" test, without walking every string.


def canonical_json_fast(row: Any) -> bytes:
    """Same bytes as canonical.canonical_json. Flat rows of str/bool/None/small int (the producer's
    rows) skip the recursive walk; a DEL byte is looked for in the output (one C scan)."""
    if type(row) is dict:
        for value in row.values():
            t = type(value)
            if t is str or t is bool or value is None:
                continue
            if t is int and -canonical._EXACT_INT_LIMIT < value < canonical._EXACT_INT_LIMIT:
                continue
            return canonical.canonical_json(row)  # nested, float or big int: the careful path
        try:
            out = orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            return canonical.canonical_json(row)
        if b"\x7f" not in out:
            return out
    return canonical.canonical_json(row)


# -- sketch 2: timestamps: the date-and-minute part changes rarely, cache it.


class TimestampParser:
    """Same result as parse.parse_timestamp_ns; `YYYY-MM-DDTHH:MM:SS[.fff]Z` by slicing, with
    the minute's epoch seconds cached; anything else goes to the regex path."""

    def __init__(self) -> None:
        self._minute_key = ""
        self._minute_s = 0

    def __call__(self, value: Any) -> int | None:
        if type(value) is str and len(value) >= 20 and value[-1] == "Z" and value[10] == "T" and value[16] == ":":
            key = value[:16]
            if key != self._minute_key:
                try:
                    y, mo, d, h, mi = int(value[0:4]), int(value[5:7]), int(value[8:10]), int(value[11:13]), int(value[14:16])
                    days = date(y, mo, d).toordinal() - parse._EPOCH_ORDINAL
                except ValueError:
                    return parse.parse_timestamp_ns(value)
                if h > 23 or mi > 59 or value[4] != "-" or value[7] != "-":
                    return parse.parse_timestamp_ns(value)
                self._minute_key, self._minute_s = key, days * 86400 + h * 3600 + mi * 60
            sec = value[17:19]
            frac = value[20:-1] if len(value) > 20 else ""
            if sec.isdigit() and int(sec) <= 60 and (len(value) == 20 or (value[19] in ".," and frac.isdigit())):
                return (self._minute_s + int(sec)) * 1_000_000_000 + int(frac[:9].ljust(9, "0") if frac else 0)
        return parse.parse_timestamp_ns(value)


# -- sketch 3: encode attributes straight to bytes instead of dicts + one orjson.dumps.


def _first_present(row: dict[str, Any], *names: str) -> Any:
    """The first of `names` the row has a non-None value for (what row_span does inline)."""
    for name in names:
        value = row.get(name)
        if value is not None:
            return value
    return None


def _value_bytes(value: Any) -> bytes:
    t = type(value)
    if t is str:
        return b'{"stringValue":' + orjson.dumps(value) + b"}"
    if t is int and span_building.INT64_MIN <= value <= span_building.INT64_MAX:
        return b'{"intValue":"%d"}' % value
    if t is bool:
        return b'{"boolValue":true}' if value else b'{"boolValue":false}'
    return orjson.dumps(span_building.any_value(value))


def _kv(key: str) -> Callable[[Any], bytes]:
    prefix = b'{"key":' + orjson.dumps(key) + b',"value":'
    return lambda value: prefix + _value_bytes(value) + b"}"


def row_span_bytes(
    row: dict[str, Any],
    digest: bytes,
    *,
    offset: int,
    observed_ns: int,
    options: ids.MappingOptions,
    chain_verdict: chain.ChainVerdict | None,
    parse_ts: Callable[[Any], int | None],
) -> bytes:
    """Same bytes as encode_span(row_span(...)) built from byte fragments (tool rows and
    non-tool rows; the same attribute order as span_building.row_span)."""
    attrs: list[bytes] = []
    add = attrs.append
    event = row.get("event")
    event_name = event if isinstance(event, str) and event else None
    tool = row.get("tool")
    tool_name = tool if isinstance(tool, str) and tool else None
    agent = _first_present(row, "agent_id", "session_id")
    if agent is not None:
        add(KV["agent.id"](agent))
    for source, attribute in span_building._DIRECT_ATTRIBUTES:
        value = row.get(source)
        if value is not None:
            add(KV[attribute](value))
    outcome = _first_present(row, "policy_outcome", "outcome")
    if outcome is not None:
        add(KV["policy.outcome"](outcome))
    error = _first_present(row, "error_type", "error")
    blocked = event_name == "action_blocked"
    if tool_name is not None:
        genai_tool: str | None = tool_name
    elif event_name in span_building.GUARDRAIL_EVENTS:
        genai_tool = f"guardrail.{event_name}"
    else:
        genai_tool = None
    if genai_tool is not None:
        name = f"execute_tool {genai_tool}"
        add(CONST_EXECUTE_TOOL)
        add(KV["gen_ai.tool.name"](genai_tool))
        add(CONST_TOOL_TYPE_FUNCTION if tool_name is not None else CONST_TOOL_TYPE_EXTENSION)
        add(CONST_SENTRY_EXECUTE_TOOL)
        call_id = _first_present(row, *span_building._TOOL_CALL_ID_FIELDS)
        if call_id is not None:
            add(KV["gen_ai.tool.call.id"](str(call_id)))
    else:
        name = f"invoke_workflow {event_name}" if event_name else "invoke_workflow audit"
        add(CONST_INVOKE_WORKFLOW)
        add(CONST_SENTRY_INVOKE_WORKFLOW)
    session = row.get("session_id")
    if session is not None:
        add(KV["gen_ai.conversation.id"](str(session)))
    agent_id = row.get("agent_id")
    if agent_id is not None:
        add(KV["gen_ai.agent.id"](str(agent_id)))
    if error is not None:
        add(KV["error.type"](error if isinstance(error, str) and error else "_OTHER"))
        status = b'{"code":2,"message":"tool error"}'
    elif blocked:
        add(KV["error.type"]("action_blocked"))
        status = b'{"code":2,"message":"action blocked"}'
    else:
        status = b'{"code":1}'
    if chain_verdict is not None:
        if chain_verdict.verified is not None:
            add(KV["audit.chain.verified"](chain_verdict.verified))
        add(KV["audit.hash"](chain_verdict.row_hash))
        if chain_verdict.restart:
            add(KV["audit.chain.restart"](True))
    add(KV["audit.offset"](offset))
    start = parse_ts(row.get("ts"))
    if start is None:
        start = observed_ns
        add(KV["audit.ts_invalid"](True))
    end = start
    duration = row.get("duration_ms")
    if isinstance(duration, (int, float)) and not isinstance(duration, bool) and 0 <= duration < 10**12:
        end = start + int(duration * 1_000_000)
    return b"".join(
        (
            b'{"traceId":"',
            ids.trace_id_for(row, digest, options).encode(),
            b'","spanId":"',
            ids.span_id_for(digest).encode(),
            b'","name":',
            orjson.dumps(name),
            b',"kind":1,"startTimeUnixNano":"%d","endTimeUnixNano":"%d","attributes":[' % (start, end),
            b",".join(attrs),
            b'],"status":',
            status,
            b"}",
        )
    )


KV = {
    name: _kv(name)
    for name in (
        "agent.id",
        "policy.outcome",
        "gen_ai.tool.name",
        "gen_ai.tool.call.id",
        "gen_ai.conversation.id",
        "gen_ai.agent.id",
        "error.type",
        "audit.chain.verified",
        "audit.hash",
        "audit.chain.restart",
        "audit.offset",
        "audit.ts_invalid",
        *(attribute for _, attribute in span_building._DIRECT_ATTRIBUTES),
    )
}
CONST_EXECUTE_TOOL = (
    KV["gen_ai.tool.name"]("x").replace(b"gen_ai.tool.name", b"gen_ai.operation.name").replace(b'"x"', b'"execute_tool"')
)
CONST_INVOKE_WORKFLOW = CONST_EXECUTE_TOOL.replace(b"execute_tool", b"invoke_workflow")
CONST_TOOL_TYPE_FUNCTION = _kv("gen_ai.tool.type")("function")
CONST_TOOL_TYPE_EXTENSION = _kv("gen_ai.tool.type")("extension")
CONST_SENTRY_EXECUTE_TOOL = _kv("sentry.op")("gen_ai.execute_tool")
CONST_SENTRY_INVOKE_WORKFLOW = _kv("sentry.op")("gen_ai.invoke_workflow")


# -- measuring -----------------------------------------------------------------------------------


class _NoEvents:
    def malformed_line(self, reason: str) -> None:
        pass

    def chain_break(self, *args: Any) -> None:
        pass


def drain(results: Iterable[object]) -> None:
    """Consume without keeping: results kept alive make the GC's young-generation passes
    (and so the timings) grow with the number of rows, which the daemon never sees."""
    deque(results, maxlen=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5, help="best of this many timings (the least disturbed by other load)")
    n = parser.parse_args().rows
    repeats = parser.parse_args().repeats
    data = RowGenerator().lines(n)
    lines = LineSplitter(1 << 20).feed(data)
    raw = [line.data for line in lines]
    rows = [orjson.loads(d) for d in raw]
    digests = [hashlib.sha256(d).digest() for d in raw]
    options = ids.MappingOptions()
    hasher = chain.ChainHasher()
    state = chain.ChainState()
    verdicts = [chain.verify_row(state, r, hasher) for r in rows]

    # The sketches must give today's bytes exactly.
    assert all(canonical_json_fast(r) == canonical.canonical_json(r) for r in rows)
    ts = TimestampParser()
    assert all(ts(r["ts"]) == parse.parse_timestamp_ns(r["ts"]) for r in rows)
    for r, d, v in zip(rows, digests, verdicts):
        today = envelope.encode_span(span_building.row_span(r, d, offset=7, observed_ns=1, options=options, chain=v))
        assert row_span_bytes(r, d, offset=7, observed_ns=1, options=options, chain_verdict=v, parse_ts=ts) == today

    def timed(label: str, fn: Callable[[], object]) -> None:
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        print(f"{label:<58} {min(samples) / n * 1e6:6.2f} µs/row", flush=True)

    def map_all() -> None:
        mapper = RowMapper(options, hasher, chain.ChainState(), _NoEvents())
        for line in lines:
            mapper.map_line(line, 1)

    print(
        f"{n} rows, {len(data) / n:.0f} bytes each; span {len(envelope.encode_span(span_building.row_span(rows[1], digests[1], offset=7, observed_ns=1, options=options, chain=verdicts[1])))} bytes"
    )
    print("-- today")
    timed("floor: orjson.loads + orjson.dumps", lambda: drain(orjson.dumps(orjson.loads(d)) for d in raw))
    timed("RowMapper.map_line (everything below)", map_all)
    timed("parse.parse_line", lambda: drain(parse.parse_line(d) for d in raw))
    timed("ids.line_digest (sha256 of the line)", lambda: drain(ids.line_digest(d) for d in raw))
    timed("chain.verify_row", lambda: drain(chain.verify_row(chain.ChainState(), r, hasher) for r in rows))
    timed("  canonical.canonical_json", lambda: drain(canonical.canonical_json(r) for r in rows))
    timed("  canonical._for_orjson (part of canonical_json)", lambda: drain(canonical._for_orjson(r) for r in rows))
    timed(
        "span_building.row_span",
        lambda: drain(
            span_building.row_span(r, d, offset=7, observed_ns=1, options=options, chain=v)
            for r, d, v in zip(rows, digests, verdicts)
        ),
    )
    timed("  parse.parse_timestamp_ns", lambda: drain(parse.parse_timestamp_ns(r["ts"]) for r in rows))
    timed("  ids.trace_id_for", lambda: drain(ids.trace_id_for(r, d, options) for r, d in zip(rows, digests)))
    spans = [
        span_building.row_span(r, d, offset=7, observed_ns=1, options=options, chain=v)
        for r, d, v in zip(rows, digests, verdicts)
    ]
    timed("envelope.encode_span", lambda: drain(envelope.encode_span(s) for s in spans))
    timed(
        "row_span + encode_span",
        lambda: drain(
            envelope.encode_span(span_building.row_span(r, d, offset=7, observed_ns=1, options=options, chain=v))
            for r, d, v in zip(rows, digests, verdicts)
        ),
    )
    print("-- sketches (same bytes)")
    timed("whole chunk: orjson.loads(b'[' + b','.join(lines) + b']')", lambda: orjson.loads(b"[" + b",".join(raw) + b"]"))
    timed("canonical_json_fast", lambda: drain(canonical_json_fast(r) for r in rows))
    timed("TimestampParser", lambda: drain(ts(r["ts"]) for r in rows))
    today_kv = span_building.kv
    span_building.kv = lambda key, value: (
        {"key": key, "value": {"stringValue": value}} if type(value) is str else today_kv(key, value)
    )  # sketch 4: strings first
    try:
        assert all(
            envelope.encode_span(span_building.row_span(r, d, offset=7, observed_ns=1, options=options, chain=v)) == e
            for r, d, v, e in zip(rows, digests, verdicts, (envelope.encode_span(s) for s in spans))
        )
        timed(
            "row_span + encode_span, _kv tests `type(value) is str` first",
            lambda: drain(
                envelope.encode_span(span_building.row_span(r, d, offset=7, observed_ns=1, options=options, chain=v))
                for r, d, v in zip(rows, digests, verdicts)
            ),
        )
    finally:
        span_building.kv = today_kv
    timed(
        "row_span_bytes (row_span + encode_span)",
        lambda: drain(
            row_span_bytes(r, d, offset=7, observed_ns=1, options=options, chain_verdict=v, parse_ts=ts)
            for r, d, v in zip(rows, digests, verdicts)
        ),
    )


if __name__ == "__main__":
    main()
