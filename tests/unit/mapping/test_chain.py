"""The hash chain: canonical JSON agrees with Debian's `jq -c -S` (jq 1.6), the row hash
(SHA-256 and HMAC), and the streaming verifier's verdicts for each kind of tampering."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import subprocess
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_otlp.mapping.canonical import canonical_json, canonical_line
from audit_otlp.mapping.chain import GENESIS, ChainHasher, ChainState, verify_row
from audit_otlp.mapping.parse import parse_line
from tests.helpers.paths import TEST_DATA

DATA = TEST_DATA
JQ = shutil.which("jq")
needs_jq = pytest.mark.skipif(JQ is None, reason="jq is not installed (tests/run apt-installs it)")


def jq_canonical(lines: list[bytes]) -> list[bytes]:
    """Every line through one `jq -c -S .` process."""
    assert JQ is not None
    out = subprocess.run(
        [JQ, "-c", "-S", "."], input=b"\n".join(lines) + b"\n", capture_output=True, check=True, timeout=60
    ).stdout
    return out.splitlines()


def ours(line: bytes) -> bytes:
    row, reason = parse_line(line)
    assert reason is None, (line, reason)
    return canonical_line(line, row)


# -- agreement with jq ------------------------------------------------------------------------


def corpus() -> list[bytes]:
    return [line for line in (DATA / "jq_corpus.jsonl").read_bytes().splitlines() if line.strip()]


def test_corpus_matches_recorded_jq_output() -> None:
    """The corpus against the output Debian's jq 1.6 gave for it (runs without jq too)."""
    expected = (DATA / "jq_corpus.expected").read_bytes().splitlines()
    lines = corpus()
    assert len(lines) == len(expected)
    for line, want in zip(lines, expected):
        assert ours(line) == want, line


@needs_jq
def test_corpus_matches_live_jq() -> None:
    lines = corpus()
    for line, want in zip(lines, jq_canonical(lines), strict=True):
        assert ours(line) == want, line


@needs_jq
@pytest.mark.parametrize(
    "text",
    [
        '{"n":1.0}',
        '{"n":1e3}',
        '{"n":-0.0}',
        '{"n":0.1}',
        '{"n":1e-7}',
        '{"n":1e300}',
        '{"n":-0}',
        '{"n":9007199254740993}',
        '{"n":9007199254740992}',
        '{"n":10000000000000000}',
        '{"n":18446744073709551616}',
        '{"n":1000000000000000000000000000000}',
        '{"n":1e16}',
        '{"n":1e-5}',
        '{"n":123456789.123456789}',
        '{"s":"\\u007f"}',
        '{"s":"\u2028\u2029"}',
        '{"s":"\\ud83d\\ude00"}',
        '{"s":"\\udc00"}',
        '{"\\u00e9":1,"e":2,"\\ud83d\\ude00":3,"\\uff41":4,"\\udc00":5,"\\ue000":6}',
        '{"a":[{"z":1,"y":[{"d":1,"c":2}]}]}',
        '{"k":1,"k":2}',
    ],
)
def test_single_cases_match_jq(text: str) -> None:
    line = text.encode()
    assert ours(line) == jq_canonical([line])[0]


def _number_text() -> st.SearchStrategy[str]:
    ints = st.one_of(
        st.integers(-(2**53) - 5, 2**53 + 5),
        st.integers(-(2**70), 2**70),
        st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, 10**16, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, 0]),
    ).map(str)
    floats = st.floats(allow_nan=False, allow_infinity=False).map(repr)
    exponents = st.tuples(st.integers(-9999, 9999), st.sampled_from(["e", "E", "e+", "e-", "E-"]), st.integers(0, 330)).map(
        lambda t: f"{t[0]}{t[1]}{t[2]}"
    )
    decimals = st.tuples(st.integers(-(10**6), 10**6), st.integers(0, 10**12)).map(lambda t: f"{t[0]}.{t[1]}")
    return st.one_of(ints, floats, exponents, decimals, st.sampled_from(["-0", "-0.0", "0.0", "1.0", "1e3", "100.00"]))


def _string_text() -> st.SearchStrategy[str]:
    # Any text but lone surrogates (jq 1.6 refuses an unpaired high surrogate), written with or
    # without \u escapes.
    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
    return st.tuples(text, st.booleans()).map(lambda t: json.dumps(t[0], ensure_ascii=t[1]))


def _json_text() -> st.SearchStrategy[str]:
    leaves = st.one_of(_number_text(), _string_text(), st.sampled_from(["true", "false", "null"]))
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
            st.lists(st.tuples(_string_text(), children), max_size=5).map(
                lambda kvs: "{" + ",".join(f"{k}:{v}" for k, v in kvs) + "}"
            ),
        ),
        max_leaves=12,
    )


_objects = st.lists(st.tuples(_string_text(), _json_text()), max_size=8).map(
    lambda kvs: "{" + ",".join(f"{k}:{v}" for k, v in kvs) + "}"
)


@needs_jq
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_objects, min_size=20, max_size=40))
def test_generated_corpus_matches_jq(texts: list[str]) -> None:
    """Random objects (odd numbers, any text, nesting, duplicate keys), all through one jq call."""
    lines = [t.encode("utf-8") for t in texts]
    for line, want in zip(lines, jq_canonical(lines), strict=True):
        assert ours(line) == want, line


def test_fast_and_slow_paths_agree() -> None:
    """The orjson fast path is only an optimisation of the general printer."""
    from audit_otlp.mapping.canonical import _slow_canonical

    for line in corpus():
        row, _ = parse_line(line)
        assert canonical_json(row) == _slow_canonical(row).encode("utf-8", "surrogatepass")


def test_fast_path_floats_print_as_jq_prints_them() -> None:
    """The orjson fast path takes non-integral floats in [1e-4, 1e15): pin that orjson formats
    them exactly like jq's printer (a new orjson release could change its float formatting)."""
    import random
    import struct

    from audit_otlp.mapping.canonical import _jq_number

    rng = random.Random(5)
    floats = [rng.choice((-1, 1)) * 10 ** rng.uniform(-4, 15) for _ in range(20000)]
    floats += [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(20000)]
    floats += [1e-4, 0.00011, 0.1, 0.30000000000000004, 999999999999999.9, 123456789012345.6, 2.5, -7.125]
    checked = 0
    for f in floats:
        if f == f and 1e-4 <= abs(f) < 1e15 and not f.is_integer():
            assert canonical_json([f]) == f"[{_jq_number(f)}]".encode(), repr(f)
            checked += 1
    assert checked > 20000


def test_canonical_json_of_a_typical_row() -> None:
    row = {"tool": "Write", "event": "tool_use", "ts": "2026-04-15T14:23:00Z", "prev_hash": GENESIS, "n": 1.0}
    assert canonical_json(row) == b'{"event":"tool_use","n":1,"prev_hash":"GENESIS","tool":"Write","ts":"2026-04-15T14:23:00Z"}'


# -- the row hash -------------------------------------------------------------------------------


def test_sha256_and_hmac_row_hash() -> None:
    row = {"b": 1, "a": "é"}
    canonical = '{"a":"é","b":1}'.encode()
    assert ChainHasher().row_hash(row) == base64.b64encode(hashlib.sha256(canonical).digest()).decode()
    key = "k€y".encode()
    assert ChainHasher(key).row_hash(row) == base64.b64encode(hmac.new(key, canonical, hashlib.sha256).digest()).decode()
    assert ChainHasher(key).row_hash(row) != ChainHasher().row_hash(row)


@pytest.mark.parametrize("key_length", [0, 1, 32, 63, 64, 65, 200])
def test_hmac_matches_the_standard_library_for_any_key_length(key_length: int) -> None:
    key = bytes(range(256))[:key_length]
    for canonical in (b"", b"{}", b'{"a":"\xc3\xa9"}', b"x" * 1000):
        want = base64.b64encode(hmac.new(key, canonical, hashlib.sha256).digest()).decode()
        assert ChainHasher(key).hash_canonical(canonical) == want
    assert repr(ChainHasher(b"s3cret")) == "ChainHasher(key=***)"


@needs_jq
def test_row_hash_is_sha256_of_jq_output() -> None:
    """What a producer computing `jq -c -S . | sha256sum` gets, line by line."""
    lines = corpus()
    for line, printed in zip(lines, jq_canonical(lines), strict=True):
        row, _ = parse_line(line)
        assert ChainHasher().line_hash(line, row) == base64.b64encode(hashlib.sha256(printed).digest()).decode()


# -- verdicts -----------------------------------------------------------------------------------


def chain_rows(n: int, hasher: ChainHasher | None = None) -> list[dict[str, Any]]:
    hasher = hasher or ChainHasher()
    rows, prev = [], GENESIS
    for i in range(n):
        row = {"event": "tool_use", "seq": i + 1, "tool": "Read", "prev_hash": prev}
        prev = hasher.row_hash(row)
        rows.append(row)
    return rows


def breaks_at(rows: list[dict[str, Any]]) -> list[int]:
    """1-based positions of rows judged broken."""
    state, hasher = ChainState(), ChainHasher()
    return [i + 1 for i, row in enumerate(rows) if verify_row(state, row, hasher).broken]


def test_intact_chain() -> None:
    state = ChainState()
    verdicts = [verify_row(state, row, ChainHasher()) for row in chain_rows(20)]
    assert all(v.verified for v in verdicts)
    assert not any(v.anchor or v.restart or v.resumed for v in verdicts)
    assert verdicts[0].expected == GENESIS and verdicts[1].expected == verdicts[0].row_hash
    assert state.breaks == 0 and state.rows == 20 and state.last_hash == verdicts[-1].row_hash


def test_edit_breaks_the_next_row_once() -> None:
    rows = chain_rows(10)
    rows[4] = {**rows[4], "tool": "Bash"}  # row 5 edited, its own prev_hash intact
    assert breaks_at(rows) == [6]


def test_delete_breaks_the_row_after_the_gap_once() -> None:
    rows = chain_rows(10)
    del rows[4]  # row 5 gone: the old row 6 is now at position 5
    assert breaks_at(rows) == [5]


def test_insert_with_forged_prev_hash_breaks_the_row_after_it() -> None:
    rows = chain_rows(10)
    forged = {"event": "tool_use", "seq": 99, "prev_hash": ChainHasher().row_hash(rows[3])}
    rows.insert(4, forged)  # position 5
    assert breaks_at(rows) == [6]


def test_insert_with_wrong_prev_hash_breaks_only_itself() -> None:
    rows = chain_rows(10)
    rows.insert(4, {"event": "tool_use", "seq": 99, "prev_hash": "AAAA"})  # position 5
    state, hasher = ChainState(), ChainHasher()
    verdicts = [verify_row(state, row, hasher) for row in rows]
    assert [i + 1 for i, v in enumerate(verdicts) if v.broken] == [5]
    assert verdicts[5].verified and verdicts[5].resumed  # links to the row before the insertion


def test_reorder_breaks_at_the_first_moved_row() -> None:
    rows = chain_rows(10)
    rows[4], rows[5] = rows[5], rows[4]  # positions 5 and 6 swapped
    found = breaks_at(rows)
    assert found[0] == 5 and len(found) <= 2


def test_genesis_in_mid_stream_is_a_reported_restart() -> None:
    rows = chain_rows(5)
    restarted = chain_rows(3)  # a second chain starting with GENESIS
    state, hasher = ChainState(), ChainHasher()
    verdicts = [verify_row(state, row, hasher) for row in rows + restarted]
    assert verdicts[5].restart and verdicts[5].broken and verdicts[5].kind == "restart"
    assert verdicts[5].expected == verdicts[4].row_hash and verdicts[5].found == GENESIS
    assert all(v.verified for v in verdicts[6:])  # the new chain continues from its GENESIS
    assert state.breaks == 1


def test_start_mid_chain_is_an_unchecked_anchor() -> None:
    rows = chain_rows(6)[3:]
    state, hasher = ChainState(), ChainHasher()
    verdicts = [verify_row(state, row, hasher) for row in rows]
    assert verdicts[0].anchor and verdicts[0].expected is None and not verdicts[0].broken
    assert all(v.verified and not v.anchor for v in verdicts[1:])


def test_state_from_a_checkpoint_continues_the_chain() -> None:
    rows = chain_rows(8)
    first = ChainState()
    for row in rows[:5]:
        verify_row(first, row, ChainHasher())
    resumed = ChainState(last_hash=first.last_hash)  # what the checkpoint keeps
    verdicts = [verify_row(resumed, row, ChainHasher()) for row in rows[5:]]
    assert all(v.verified and not v.anchor for v in verdicts)


def test_rows_without_prev_hash_are_outside_the_chain() -> None:
    rows = chain_rows(4)
    rows.insert(2, {"event": "note"})
    state, hasher = ChainState(), ChainHasher()
    verdicts = [verify_row(state, row, hasher) for row in rows]
    assert verdicts[2].verified is None
    assert all(v.verified for i, v in enumerate(verdicts) if i != 2)


def test_non_string_prev_hash_is_a_break_not_a_crash() -> None:
    rows = chain_rows(3)
    rows.append({"event": "x", "prev_hash": {"not": "a string"}})
    state, hasher = ChainState(), ChainHasher()
    verdict = [verify_row(state, row, hasher) for row in rows][-1]
    assert verdict.broken and verdict.found == '{"not": "a string"}'


def test_wrong_key_breaks_every_link() -> None:
    rows = chain_rows(4, ChainHasher(b"right"))
    state = ChainState()
    verdicts = [verify_row(state, row, ChainHasher(b"wrong")) for row in rows]
    assert [v.broken for v in verdicts] == [False, True, True, True]


def test_line_hash_keeps_jq_negative_zero() -> None:
    line = b'{"a": -0, "prev_hash": "GENESIS"}'
    row = orjson.loads(line)
    assert canonical_line(line, row) == b'{"a":-0,"prev_hash":"GENESIS"}'
    assert canonical_json(row) == b'{"a":0,"prev_hash":"GENESIS"}'  # the value alone has lost it
