"""The mapping stage's fast paths give what the careful code gives, at their edges: the flat-row
canonical JSON (a type-set test and OPT_STRICT_INTEGER instead of a loop over the values; -0
looked for only when a value equals 0), the chain's bounded link memory (an OrderedDict) and
its `ok` shortcut, and the identity window's prefix taken for each cursor."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest

from audit_otlp.mapping.canonical import _parse_int_keeping_negative_zero, _slow_canonical, canonical_json, canonical_line
from audit_otlp.mapping.chain import CARRIED_LINKS, FORK_WINDOW, GAP_HORIZON, ChainState, judge_link
from audit_otlp.mapping.ids import IDENTICAL_WINDOW, IdentityWindow
from audit_otlp.mapping.parse import parse_line

JQ = shutil.which("jq")

# Flat rows at the fast path's edges: integers at and past 2**53 (and past 64 bits, which only
# the standard library parses), floats (integral, exponent forms, -0.0), DEL in keys and values,
# non-ASCII text, lone surrogates, -0 with and without a 0 beside it, nested values.
EDGE_LINES = [
    b'{"a":"x","b":true,"c":null,"d":12}',
    b'{"n":9007199254740991,"m":-9007199254740991}',
    b'{"n":9007199254740992}',
    b'{"n":-9007199254740992}',
    b'{"n":9223372036854775807}',
    b'{"n":18446744073709551615}',
    b'{"n":18446744073709551616}',
    b'{"n":-9223372036854775809}',
    b'{"f":1.5}',
    b'{"f":3.0}',
    b'{"f":1e-05}',
    b'{"f":1e16}',
    b'{"f":-0.0}',
    b'{"f":0.0,"s":"-0,"}',
    b'{"a":-0}',
    b'{"a": -0 , "b":1}',
    b'{"a":0,"b":"-0,"}',
    b'{"a":false,"b":"x-0}"}',
    b'{"a":"-0]","b":2}',
    b'{"a":-0,"a":"replaced"}',
    b'{"del":"a\x7fb"}',
    b'{"a\x7f":"key with DEL"}',
    '{"é":"ünïcödé","z":"日本語","emoji":"😀","ls":"\u2028"}'.encode(),
    b'{"b":"\\u00e9","a":"\\ud83d\\ude00"}',
    b'{"lone":"\\ud800"}',
    b'{"\\udc00":"lone surrogate key","a":1}',
    b'{"ctl":"\\u0001\\n\\t\\"\\\\/"}',
    b'{"nested":{"b":1,"a":[1,2.5,{"c":null}]}}',
    b'{"list":[],"obj":{}}',
    b'{"big":[9007199254740993]}',
    b'{"z":1,"a":2,"m":3,"A":4,"_":5,"0":6}',
    b"{}",
]


def careful(line: bytes) -> bytes:
    """The general printer over the standard library's reading of the line (-0 kept)."""
    return _slow_canonical(json.loads(line, parse_int=_parse_int_keeping_negative_zero)).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("line", EDGE_LINES, ids=lambda line: line.decode("utf-8", "replace")[:40])
def test_canonical_line_fast_path_matches_the_careful_printer(line: bytes) -> None:
    row, reason = parse_line(line)
    assert reason is None and row is not None
    assert canonical_line(line, row) == careful(line)
    if b"-0" not in line:  # without the line's text, an integer -0 is a plain 0
        assert canonical_json(row) == careful(line)


@pytest.mark.skipif(JQ is None, reason="jq is not installed (tests/run apt-installs it)")
def test_canonical_line_fast_path_matches_jq() -> None:
    assert JQ is not None
    # jq 1.6 refuses a lone high surrogate just before a closing quote (a parse error); it
    # replaces every other lone surrogate, as the careful printer does.
    lines = [line for line in EDGE_LINES if line != b'{"lone":"\\ud800"}']
    assert len(lines) == len(EDGE_LINES) - 1
    printed = subprocess.run([JQ, "-c", "-S", "."], input=b"\n".join(lines) + b"\n", capture_output=True, check=True)
    for line, want in zip(lines, printed.stdout.splitlines(), strict=True):
        row, _ = parse_line(line)
        assert canonical_line(line, row) == want, line


def test_flat_rows_with_random_plain_values_match_the_careful_printer() -> None:
    rng = random.Random(14)
    plain = [
        lambda: rng.randint(-(2**54), 2**54),
        lambda: rng.randint(-5, 5),
        lambda: rng.choice((True, False, None)),
        lambda: "".join(rng.choice("aZ-0,}]\x7f\x01é😀\u2028 ") for _ in range(rng.randint(0, 6))),
    ]
    for _ in range(3000):
        row = {f"k{rng.randint(0, 20)}": rng.choice(plain)() for _ in range(rng.randint(1, 8))}
        line = json.dumps(row, ensure_ascii=rng.random() < 0.5).encode()
        parsed, _ = parse_line(line)
        assert canonical_line(line, parsed) == careful(line), line


# -- the chain's link memory ---------------------------------------------------------------------


class ReferenceLinks:
    """The link memory as it was: a dict, re-insertion moving a link to the end."""

    def __init__(self) -> None:
        self.recent: dict[str, None] = {}

    def remember(self, link: str) -> None:
        self.recent.pop(link, None)
        self.recent[link] = None
        if len(self.recent) > FORK_WINDOW:
            del self.recent[next(iter(self.recent))]


@pytest.mark.parametrize("distinct", [5, FORK_WINDOW - 1, FORK_WINDOW + 1, 3 * FORK_WINDOW])
def test_recent_links_keep_the_newest_distinct_links_in_order(distinct: int) -> None:
    rng = random.Random(distinct)
    state, reference = ChainState(), ReferenceLinks()
    for step in range(4 * FORK_WINDOW):
        # Mostly new links, some repeats of recent and of older ones (identical rows).
        link = f"h{step}" if rng.random() < 0.7 else f"h{rng.randint(max(0, step - distinct), step)}"
        state.remember(link)
        reference.remember(link)
        if step % 97 == 0 or step > 4 * FORK_WINDOW - 5:
            assert list(state.recent) == list(reference.recent)
            assert state.carried() == list(reference.recent)[-CARRIED_LINKS:]
    resumed = ChainState.resumed("last", state.carried(), seen=3)
    assert resumed.carried() == [*state.carried(), "last"][-CARRIED_LINKS:]


def test_carried_with_fewer_links_than_carried() -> None:
    state = ChainState()
    assert state.carried() == []
    for link in ("a", "b", "a"):
        state.remember(link)
    assert state.carried() == ["b", "a"]


@pytest.mark.parametrize("seen", [0, GAP_HORIZON - 1, GAP_HORIZON, GAP_HORIZON + 5])
def test_ok_shortcut_advances_the_state_like_the_general_path(seen: int) -> None:
    state = ChainState(last_hash="p", seen=seen, gap_pending=False)
    verdict = judge_link(state, "p", "q")
    assert verdict == ("ok", "q", "p", "p", False)
    assert (state.last_hash, state.rows, state.matched, state.seen, state.gap_pending) == (
        "q",
        1,
        1,
        min(seen + 1, GAP_HORIZON),
        False,
    )
    assert list(state.recent) == ["q"]
    # A prev_hash of GENESIS equal to the last hash is not the shortcut: the general path judges it.
    genesis = ChainState(last_hash="GENESIS")
    assert judge_link(genesis, "GENESIS", "x").verdict == "ok" and genesis.seen == GAP_HORIZON


# -- the identity window's cursor prefix ------------------------------------------------------------


class ReferenceWindow:
    def __init__(self) -> None:
        self.order: list[tuple[int, bytes]] = []
        self.pushed = 0

    def push(self, key: bytes) -> None:
        self.pushed += 1
        self.order.append((self.pushed, key[:8]))
        del self.order[:-IDENTICAL_WINDOW]

    def carried(self, upto: int | None) -> tuple[str, ...]:
        limit = self.pushed if upto is None else upto
        return tuple(key.hex() for count, key in self.order if count <= limit)


def test_identity_window_carried_is_the_prefix_counted_by_then() -> None:
    rng = random.Random(3)
    window, reference = IdentityWindow(), ReferenceWindow()
    for line in range(IDENTICAL_WINDOW + 300):
        digest = bytes([rng.randint(0, 3)]) * 32 if rng.random() < 0.3 else line.to_bytes(32, "big")
        window.occurrence(digest)
        reference.push(digest)
        if line % 61 == 0 or line >= IDENTICAL_WINDOW + 290:
            for upto in (None, 0, 1, window.pushed - IDENTICAL_WINDOW - 1, window.pushed - IDENTICAL_WINDOW, window.pushed - 7):
                assert window.carried(upto) == reference.carried(upto), (line, upto)
            assert window.carried(window.pushed) == window.carried() == window.carried(window.pushed + 5)


def test_identity_window_resumes_from_carried_digests() -> None:
    digests = [bytes([n]) * 32 for n in (1, 2, 1, 1)]
    window = IdentityWindow()
    counts = [window.occurrence(d) for d in digests]
    resumed = IdentityWindow(bytes.fromhex(h) for h in window.carried())
    assert counts == [0, 0, 1, 2]
    assert resumed.carried() == window.carried() and resumed.occurrence(digests[0]) == 3
