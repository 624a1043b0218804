"""Bad input and fuzzing (hypothesis) of the pure stages: line splitter, mapper, chain verifier
and config loader; plus one end-to-end run of the installed daemon over a file of nasty lines.

Invariants: no exception other than the documented one escapes; every complete line comes out
exactly once (as a span, or a malformed-line span); partial lines never come out; oversize
lines cost bounded memory; ids are valid, non-zero lower-case hex; bodies are valid OTLP.
Set TORTURE_FUZZ_EXAMPLES to run more examples (long mode uses 20x).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_otlp.config import KEYS, ConfigError, load_config
from audit_otlp.mapping.canonical import canonical_json
from audit_otlp.mapping.chain import ChainHasher, ChainState, verify_row
from audit_otlp.mapping.envelope import make_envelope, resource_attributes
from audit_otlp.mapping.ids import MappingOptions
from audit_otlp.mapping.parse import parse_line
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.source.lines import Line, LineSplitter
from tests.helpers.collector import Collector, to_proto
from tests.helpers.daemon import daemon_env

EXAMPLES = int(os.environ.get("TORTURE_FUZZ_EXAMPLES", "80"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------------------------------------
# Nasty lines (no newline inside: the splitter owns newlines).

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _no_newline(data: bytes) -> bytes:
    return data.replace(b"\n", b" ")


@st.composite
def nasty_line(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            [
                "bytes",
                "object",
                "value",
                "nul",
                "crlf",
                "bom",
                "deep",
                "huge_number",
                "dup_keys",
                "bad_utf8",
                "surrogate",
                "blank",
                "audit_row",
                "long",
            ]
        )
    )
    if kind == "bytes":
        return _no_newline(draw(st.binary(max_size=200)))
    if kind == "object":
        return json.dumps(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=8)), ensure_ascii=False).encode()
    if kind == "value":
        return _no_newline(json.dumps(draw(json_values)).encode())
    if kind == "nul":
        row = orjson.dumps({"event": "tool_use", "tool": "a\0b"})
        cut = draw(st.integers(0, len(row)))
        return row[:cut] + b"\0" + row[cut:]
    if kind == "crlf":
        return orjson.dumps({"event": "tool_use", "ts": "2026-04-15T14:23:00Z"}) + draw(
            st.sampled_from([b"\r", b"\r\r", b" \r\t"])
        )
    if kind == "bom":
        return b"\xef\xbb\xbf" + orjson.dumps({"event": "tool_use"})
    if kind == "deep":
        depth = draw(st.integers(1, 300))  # deeper: see test_deeply_nested_line_* (a known bug)
        inner = b"[" * depth + b"]" * depth
        return b'{"event":"x","deep":' + inner + b"}"
    if kind == "huge_number":
        digits = draw(st.integers(19, 308))  # longer: see test_huge_integer_* (a known bug)
        sign = draw(st.sampled_from([b"", b"-"]))
        return b'{"event":"tool_use","duration_ms":' + sign + b"9" * digits + b',"bytes_in":1e999,"ts":"2026-04-15T14:23:00Z"}'
    if kind == "dup_keys":
        return b'{"event":"a","event":"b","prev_hash":"GENESIS","prev_hash":7,"tool":"x","tool":["y"]}'
    if kind == "bad_utf8":
        good = orjson.dumps({"event": "tool_use", "target": draw(st.text(max_size=20))})
        cut = draw(st.integers(1, len(good) - 1))
        return good[:cut] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])) + good[cut:]
    if kind == "surrogate":
        return b'{"event":"tool_use","target":"\\ud800","ts":"2026-04-15T14:23:00.123456789123Z"}'
    if kind == "blank":
        return draw(st.sampled_from([b"", b" ", b"\t", b"\r", b" \r "]))
    if kind == "audit_row":
        row = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "event": st.sampled_from(["tool_use", "action_blocked", "secret_detected", ""]) | json_values,
                    "ts": st.sampled_from(
                        [
                            "2026-04-15T14:23:00Z",
                            "1970-01-01T00:00:00Z",
                            "2554-07-21T23:34:33Z",
                            "9999-12-31T23:59:59.999Z",
                            "0001-01-01T00:00:00Z",
                            "2026-02-30T25:61:61Z",
                            "not a time",
                            "",
                        ]
                    )
                    | json_values,
                    "duration_ms": st.integers(-(2**70), 2**70) | json_values,
                    "trace_id": st.sampled_from(["0" * 32, "F" * 32, "abc"]) | json_values,
                    "prev_hash": st.sampled_from(["GENESIS", "", "x"]) | json_values,
                    "session_id": json_values,
                    "tool": json_values,
                    "error": json_values,
                },
            )
        )
        return json.dumps(row, ensure_ascii=False).encode()
    assert kind == "long"
    return b'{"event":"tool_use","target":"' + b"a" * draw(st.integers(100, 5000)) + b'"}'


class Recorder:
    def __init__(self) -> None:
        self.malformed: list[str] = []
        self.breaks = 0

    def malformed_line(self, reason: str) -> None:
        self.malformed.append(reason)

    def chain_break(self, verdict: Any, offset: int, line_number: int) -> None:
        self.breaks += 1


ENVELOPE = make_envelope(resource_attributes("torture", {}, True))


def _check_ids(span: dict[str, Any]) -> None:
    for key, width in (("traceId", 32), ("spanId", 16)):
        value = span[key]
        assert len(value) == width and all(c in "0123456789abcdef" for c in value) and set(value) != {"0"}, span


# ---------------------------------------------------------------------------------------------
# Line splitter.


@FUZZ
@given(
    data=st.lists(st.sampled_from([b"\n", b"a", b"bc", b"\r", b"\0", b"\xff", b"\n\n", b"xyzxyzxyz"]), max_size=200).map(
        b"".join
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
    limit=st.integers(1, 40),
    start=st.integers(0, 10**12),
)
def test_line_splitter_any_chunking_gives_reference_lines(data: bytes, cuts: list[int], limit: int, start: int) -> None:
    splitter = LineSplitter(limit, start)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    got: list[Line] = []
    for a, b in zip(points, points[1:]):
        got.extend(splitter.feed(data[a:b]))
        # Bounded memory: an oversize line is hashed, never held whole.
        assert sum(len(p) for p in splitter._pending) <= limit  # noqa: SLF001 - the bound under test
    *complete, rest = data.split(b"\n")
    assert len(got) == len(complete) == data.count(b"\n")  # partial lines never come out
    offset = start
    for line, piece in zip(got, complete):
        assert (line.offset, line.end) == (offset, offset + len(piece) + 1)
        if len(piece) > limit:
            assert line.data is None and line.oversize_sha256 == hashlib.sha256(piece).digest()
        else:
            assert line.data == piece
        offset = line.end
    assert splitter.pending_bytes == len(rest) and splitter.pending_offset == offset
    last = splitter.take_unterminated()
    if rest:
        assert last is not None and last.offset == offset and last.end == offset + len(rest)
        assert last.data == rest if len(rest) <= limit else last.oversize_sha256 == hashlib.sha256(rest).digest()
    else:
        assert last is None


def test_line_splitter_gigantic_line_in_bounded_memory() -> None:
    splitter = LineSplitter(1024)
    block = b"x" * 65536
    digest = hashlib.sha256()
    for _ in range(512):  # 32 MiB without a newline
        assert splitter.feed(block) == []
        digest.update(block)
        assert sum(len(p) for p in splitter._pending) <= 1024  # noqa: SLF001
    (line,) = splitter.feed(b"\nnext")
    assert line.data is None and line.oversize_sha256 == digest.digest() and line.end == 512 * 65536 + 1


# ---------------------------------------------------------------------------------------------
# Mapper and chain verifier.

# Regressions: each of these once killed the reader task (and every restart after it).
# Deep nesting: jq 1.6 refuses input deeper than 256 levels, so such a line is malformed
# ("too_deep") rather than a RecursionError; huge integers print as jq's largest double.


@pytest.mark.parametrize("digits", [309, 4000])
def test_huge_integer_row_hashes_without_crash(digits: int) -> None:
    for sign in (b"", b"-"):
        data = b'{"event":"tool_use","duration_ms":' + sign + b"9" * digits + b',"prev_hash":"GENESIS"}'
        mapper = RowMapper(MappingOptions(), ChainHasher(), ChainState(), Recorder())
        mapped = mapper.map_line(Line(0, len(data) + 1, data), observed_ns=1)
        assert len(mapped.spans) == 1


@pytest.mark.parametrize("field", ["target", "event", "tool", "session_id"])
def test_lone_surrogate_escape_maps_without_crash(field: str) -> None:
    data = b'{"%s":"a\\ud800b","prev_hash":"GENESIS"}' % field.encode()
    mapper = RowMapper(MappingOptions(), ChainHasher(), ChainState(), Recorder())
    mapped = mapper.map_line(Line(0, len(data) + 1, data), observed_ns=1)
    assert len(mapped.spans) == 1
    to_proto(orjson.loads(ENVELOPE.body(mapped.spans)))


@pytest.mark.parametrize(
    "ts, duration_ms",
    [
        ("9999-12-31T23:59:59.999Z", 5),
        ("1900-01-01T00:00:00Z", 5),
        ("0001-01-01T00:00:00Z", 5),
        ("2554-07-21T23:34:33Z", 710),  # a valid start, but start + duration passes 2^64 ns
    ],
)
def test_out_of_range_timestamp_gives_valid_otlp(ts: str, duration_ms: int) -> None:
    data = orjson.dumps({"event": "tool_use", "ts": ts, "duration_ms": duration_ms})
    mapper = RowMapper(MappingOptions(), ChainHasher(), ChainState(), Recorder())
    mapped = mapper.map_line(Line(0, len(data) + 1, data), observed_ns=1)
    to_proto(orjson.loads(ENVELOPE.body(mapped.spans)))


def deep_line(depth: int) -> bytes:
    return b'{"event":"x","deep":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("depth", [600, 1024, 100_000, -50_000])
def test_deeply_nested_line_maps_without_crash(depth: int) -> None:
    for hasher in (ChainHasher(), None):
        mapper = RowMapper(MappingOptions(), hasher, ChainState(), Recorder())
        data = deep_line(depth) if depth > 0 else b"[" * -depth  # unclosed: not even JSON
        mapped = mapper.map_line(Line(0, len(data) + 1, data), observed_ns=1)
        assert len(mapped.spans) == 1


@FUZZ
@given(
    lines=st.lists(nasty_line(), min_size=1, max_size=12),
    key=st.sampled_from([None, b"k", "ключ".encode()]),
    trace_from=st.sampled_from(["prev_hash", "session"]),
)
def test_mapper_accounts_for_every_line(lines: list[bytes], key: bytes | None, trace_from: str) -> None:
    events = Recorder()
    mapper = RowMapper(MappingOptions(trace_from), ChainHasher(key), ChainState(), events)
    offset = 0
    all_spans: list[bytes] = []
    for data in lines:
        line = Line(offset, offset + len(data) + 1, data)
        offset = line.end
        mapped = mapper.map_line(line, observed_ns=1_700_000_000_000_000_000)
        assert mapped.digest == hashlib.sha256(data).digest()
        if not data.strip():
            assert mapped.spans == []
            continue
        spans = [orjson.loads(s) for s in mapped.spans]
        assert 1 <= len(spans) <= 2, spans
        first = spans[0]
        row, reason = parse_line(data)
        if row is None:
            assert first["name"] == "audit.malformed_line" and reason in events.malformed
            assert data not in mapped.spans[0] or len(data) < 8  # never the content of a bad line
        else:
            assert first["name"] != "audit.malformed_line"
        for span in spans:
            _check_ids(span)
            assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) >= 0
        if len(spans) == 2:
            assert spans[1]["name"] == "audit.chain_broken"
        all_spans.extend(mapped.spans)
    if all_spans:
        to_proto(orjson.loads(ENVELOPE.body(all_spans)))  # valid OTLP, as the collector checks it


@FUZZ
@given(value=json_values, prev=st.one_of(st.none(), st.text(max_size=5), json_values))
def test_chain_never_crashes(value: Any, prev: Any) -> None:
    canonical = canonical_json(value)
    assert isinstance(canonical, bytes)
    row = {"v": value, "prev_hash": prev} if prev is not None else {"v": value}
    state = ChainState()
    for hasher in (ChainHasher(), ChainHasher(b"key")):
        verdict = verify_row(state, row, hasher)
        assert verdict.row_hash == hasher.row_hash(row)
    verify_row(ChainState(), value, ChainHasher())  # not even an object


@FUZZ
@given(line=nasty_line())
def test_chain_canonical_json_of_any_parsed_row(line: bytes) -> None:
    row, _ = parse_line(line)
    if row is not None:
        canonical_json(row)
        verify_row(ChainState(last_hash="x"), row, ChainHasher())


# ---------------------------------------------------------------------------------------------
# Config loader.

toml_scalars = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.text(max_size=30)
    | st.sampled_from(["", "0", "-1", "1e99", "200ms", "5s", "x", "GENESIS", "http://", "::"])
)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


toml_values = (
    toml_scalars | st.lists(toml_scalars, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=5), toml_scalars, max_size=3)
)
KEY_NAMES = [k.name for k in KEYS] + ["chain.key", "nope.key", "source"]
ENV_NAMES = sorted(
    {e for k in KEYS for e in k.env}
    | {
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "SENTRY_DSN",
        "DD_API_KEY",
        "DD_SITE",
        "AUDIT_OTLP_CHAIN_KEY",
        "STATE_DIRECTORY",
        "AUDIT_OTLP_CONFIG",
    }
)
env_text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", "0", "-5", "abc", "a=b", "=", ",", "https://key@o1.ingest.sentry.io/42", "http://[::1", "gzip", "json"]
)


@FUZZ
@given(
    entries=st.dictionaries(st.sampled_from(KEY_NAMES), toml_values, max_size=6),
    env=st.dictionaries(st.sampled_from(ENV_NAMES), env_text, max_size=5),
    garbage=st.sampled_from(["", "[", "x = ", "\0", "a.b.c = 1\na.b = 2"]),
)
def test_config_loader_only_raises_config_error(entries: dict[str, Any], env: dict[str, str], garbage: str) -> None:
    text = "\n".join(f"{name} = {toml_value(value)}" for name, value in entries.items()) + "\n" + garbage
    env = {k: v for k, v in env.items() if k != "AUDIT_OTLP_CONFIG"}
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as fh:
        fh.write(text)
    try:
        try:
            config = load_config(fh.name, {}, env)
        except ConfigError as exc:
            assert str(exc)
            return
        config.masked()
    finally:
        os.unlink(fh.name)


# ---------------------------------------------------------------------------------------------
# End to end: the installed daemon over a file of nasty lines.


def test_run_once_over_nasty_file_emits_one_span_per_nonblank_line(audit_cli: str, tmp_path: Path) -> None:
    rng = random.Random(8)
    lines: list[bytes] = [
        b"\xef\xbb\xbf" + orjson.dumps({"event": "tool_use"}),
        b"\0\0\0",
        b'{"event":"a\0b"}',
        b'{"event":"x"}\r',
        b"\r",
        b"",
        b" \t ",
        b"{" * 50_000,
        b'{"a":' + b"9" * 300 + b"}",
        b'{"a":-' + b"9" * 5000 + b"}",
        b'{"a":1e999}',
        b'{"event":"a","event":"b","prev_hash":"GENESIS","prev_hash":7}',
        b"\xff\xfe{}",
        b'{"target":"\xc3"}',
        deep_line(200),
        b"[]",
        b"null",
        b"42",
        b'"str"',
        b"NaN",
        b'{"a":NaN}',
        b'{"ts":"2026-02-30T25:61:61Z","duration_ms":-1}',
        b'{"target":"\\ud800"}',
        b'{"ts":"9999-12-31T23:59:59Z"}',
        b'{"trace_id":"00000000000000000000000000000000"}',
        b'{"event":"tool_use","target":"' + b"x" * 3_000_000 + b'"}',  # over the 1 MiB line limit
    ]
    lines += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))).replace(b"\n", b"") for _ in range(200)]
    source = tmp_path / "audit.jsonl"
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    nonblank = sum(1 for line in lines if line.strip())
    with Collector() as collector:
        done = subprocess.run(
            [
                audit_cli,
                "run",
                "--once",
                "--deadline",
                "60",
                "--file",
                str(source),
                "--checkpoint",
                str(tmp_path / "state" / "cp.json"),
                "--endpoint",
                collector.endpoint,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=daemon_env(),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        spans = collector.accepted_spans()
    assert not collector.invalid, collector.invalid[:3]
    per_line = [s for s in spans if s["name"] != "audit.chain_broken"]
    assert len(per_line) == nonblank, (len(per_line), nonblank)
    for span in spans:
        _check_ids(span)
    assert b"x" * 100 not in orjson.dumps(spans)  # the oversize line's content is not shipped


def test_deeply_nested_line_does_not_stop_the_daemon(audit_cli: str, tmp_path: Path) -> None:
    source = tmp_path / "audit.jsonl"
    source.write_bytes(b'{"event":"before"}\n' + deep_line(600) + b'\n{"event":"after"}\n')
    with Collector() as collector:
        done = subprocess.run(
            [
                audit_cli,
                "run",
                "--once",
                "--deadline",
                "30",
                "--file",
                str(source),
                "--checkpoint",
                str(tmp_path / "state" / "cp.json"),
                "--endpoint",
                collector.endpoint,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=daemon_env(),
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert len(collector.accepted_spans()) == 3


def test_verify_reports_a_too_deep_line_as_malformed(audit_cli: str, tmp_path: Path) -> None:
    source = tmp_path / "audit.jsonl"
    source.write_bytes(b'{"event":"before"}\n' + deep_line(600) + b"\n")
    done = subprocess.run(
        [audit_cli, "verify", "--json", str(source)], capture_output=True, text=True, timeout=60, env=daemon_env()
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert orjson.loads(done.stdout)["first_break"]["kind"] == "malformed"
