"""The verdict on every line (mapping/chain.py): ok, fork, unchained, restart, gap, break; one
tampering gives at most one break; forks from parallel writers, siblings of a break and torn
reads are forks; a keyed chain without its key gives gaps and one conclusion."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from audit_otlp.mapping.chain import (
    BREAK,
    FORK,
    FORK_WINDOW,
    GAP,
    GAP_HORIZON,
    GENESIS,
    KEYED_EVIDENCE,
    OK,
    RESTART,
    UNCHAINED,
    ChainHasher,
    ChainJudge,
    ChainState,
    verify_row,
)


def chain_rows(n: int, hasher: ChainHasher | None = None) -> list[dict[str, Any]]:
    hasher = hasher or ChainHasher()
    rows, prev = [], GENESIS
    for i in range(n):
        row = {"event": "tool_use", "seq": i + 1, "tool": "Read", "prev_hash": prev}
        prev = hasher.row_hash(row)
        rows.append(row)
    return rows


def verdicts_of(rows: list[dict[str, Any]], state: ChainState | None = None) -> list[str]:
    state, hasher = state or ChainState(), ChainHasher()
    return [verify_row(state, row, hasher).verdict for row in rows]


def at(verdicts: list[str], verdict: str) -> list[int]:
    """1-based positions of the rows with `verdict`."""
    return [i + 1 for i, v in enumerate(verdicts) if v == verdict]


def test_intact_chain() -> None:
    state = ChainState()
    verdicts = [verify_row(state, row, ChainHasher()) for row in chain_rows(20)]
    assert all(v.verdict == OK and v.verified for v in verdicts)
    assert verdicts[0].found == GENESIS and verdicts[1].expected == verdicts[0].row_hash
    assert state.breaks == 0 and state.rows == 20 and state.last_hash == verdicts[-1].row_hash


def _edit(rows: list[dict[str, Any]]) -> None:
    rows[4] = {**rows[4], "tool": "Bash"}  # row 5 edited, its own prev_hash intact


def _delete(rows: list[dict[str, Any]]) -> None:
    del rows[4]  # row 5 gone: the old row 6 is now at position 5


def _insert_wrong(rows: list[dict[str, Any]]) -> None:
    rows.insert(4, {"event": "tool_use", "seq": 99, "prev_hash": "AAAA"})  # position 5


def _insert_copied(rows: list[dict[str, Any]]) -> None:
    rows.insert(4, {"event": "tool_use", "seq": 99, "prev_hash": ChainHasher().row_hash(rows[3])})


def _reorder(rows: list[dict[str, Any]]) -> None:
    rows[4], rows[5] = rows[5], rows[4]  # positions 5 and 6 swapped


@pytest.mark.parametrize(
    "name, tamper, breaks, forks",
    [
        ("edited row: the row naming its original breaks", _edit, [6], []),
        ("deleted row: the row after the gap breaks", _delete, [5], []),
        ("inserted row with a wrong prev_hash breaks, the row after it is a fork", _insert_wrong, [5], [6]),
        # The documented limit: a row inserted with the prev_hash of the row above it is ok, and the
        # row after it, naming that same row, looks exactly like a fork from parallel writers.
        ("inserted row with a copied prev_hash is a fork, not a break", _insert_copied, [], [6]),
        ("swapped rows: the first moved row breaks once", _reorder, [5], [6, 7]),
    ],
)
def test_one_tampering_gives_at_most_one_break(name: str, tamper: Any, breaks: list[int], forks: list[int]) -> None:
    rows = chain_rows(10)
    tamper(rows)
    verdicts = verdicts_of(rows)
    assert at(verdicts, BREAK) == breaks and at(verdicts, FORK) == forks, verdicts


def test_rows_naming_the_same_parent_are_forks() -> None:
    """Parallel writers: both read row 3 before either appended."""
    rows = chain_rows(3)
    parent = ChainHasher().row_hash(rows[2])
    rows += [{"event": "a", "prev_hash": parent}, {"event": "b", "prev_hash": parent}]
    rows.append({"event": "c", "prev_hash": ChainHasher().row_hash(rows[3])})  # names the row 2 above
    assert verdicts_of(rows) == [OK, OK, OK, OK, FORK, FORK]


def test_a_fork_is_bounded_by_the_window() -> None:
    rows = chain_rows(FORK_WINDOW + 2)
    hasher = ChainHasher()
    near = {"event": "x", "prev_hash": hasher.row_hash(rows[2])}  # FORK_WINDOW lines back
    far = {"event": "y", "prev_hash": hasher.row_hash(rows[0])}  # beyond the window
    assert verdicts_of(rows + [near])[-1] == FORK
    assert verdicts_of(rows + [far])[-1] == BREAK


def test_siblings_of_a_broken_row_are_forks_of_the_break() -> None:
    """An edited row with three children gives one break, not three."""
    rows = chain_rows(6)
    parent = ChainHasher().row_hash(rows[5])
    rows += [{"event": e, "prev_hash": parent} for e in "abc"]
    rows[5] = {**rows[5], "tool": "Bash"}  # edit the parent of all three
    assert at(verdicts_of(rows), BREAK) == [7] and at(verdicts_of(rows), FORK) == [8, 9]


def test_genesis_in_mid_stream_is_a_restart_not_a_break() -> None:
    rows = chain_rows(5) + chain_rows(3)  # a second chain starting with GENESIS
    state = ChainState()
    verdicts = verdicts_of(rows, state)
    assert verdicts == [OK] * 5 + [RESTART] + [OK] * 2 and state.breaks == 0


def test_start_mid_chain_is_a_gap_then_unknown_parents_are_gaps_for_a_while() -> None:
    rows = chain_rows(GAP_HORIZON + 10)[3:]
    hasher = ChainHasher()
    older = hasher.row_hash(chain_rows(3)[1])  # a row from before the first one read
    state = ChainState()
    first = verify_row(state, rows[0], hasher)
    assert first.verdict == GAP and first.anchor and first.expected is None
    assert verify_row(state, {"event": "x", "prev_hash": older}, hasher).verdict == GAP  # a fork older than we saw
    for row in rows[1:]:
        verify_row(state, {**row, "prev_hash": state.last_hash}, hasher)
    assert verify_row(state, {"event": "x", "prev_hash": older}, hasher).verdict == BREAK  # history is long enough now


def test_state_from_a_checkpoint_continues_the_chain_and_its_forks() -> None:
    rows = chain_rows(8)
    first = ChainState()
    for row in rows[:5]:
        verify_row(first, row, ChainHasher())
    resumed = ChainState.resumed(first.last_hash, first.carried(), first.seen)
    fork = {"event": "f", "prev_hash": ChainHasher().row_hash(rows[2])}
    assert verdicts_of(rows[5:] + [fork], resumed) == [OK, OK, OK, FORK]
    old = ChainState.resumed(first.last_hash)  # a checkpoint from before forks were carried
    assert verdicts_of(rows[5:], old) == [OK, OK, OK]


def test_a_resume_gap_marks_the_next_row() -> None:
    rows = chain_rows(8)
    state = ChainState()
    verdicts_of(rows[:3], state)
    state.mark_gap()
    assert verdicts_of(rows[5:], state) == [GAP, OK, OK]


def test_rows_without_prev_hash_are_links_too() -> None:
    rows = chain_rows(3)
    note = {"event": "policy_blocked", "host": "evil.example"}  # egress-shield writes no prev_hash
    after = {"event": "tool_use", "prev_hash": ChainHasher().row_hash(note)}
    skipping = {"event": "tool_use", "prev_hash": ChainHasher().row_hash(rows[2])}
    assert verdicts_of(rows + [note, after]) == [OK, OK, OK, UNCHAINED, OK]
    assert verdicts_of(rows + [note, skipping]) == [OK, OK, OK, UNCHAINED, FORK]


def test_non_string_prev_hash_is_a_break_not_a_crash() -> None:
    rows = chain_rows(3)
    rows.append({"event": "x", "prev_hash": {"not": "a string"}})
    state, hasher = ChainState(), ChainHasher()
    verdict = [verify_row(state, row, hasher) for row in rows][-1]
    assert verdict.broken and verdict.found == '{"not": "a string"}'


def test_wrong_key_breaks_every_link() -> None:
    rows = chain_rows(4, ChainHasher(b"right"))
    state = ChainState()
    verdicts = [verify_row(state, row, ChainHasher(b"wrong")).verdict for row in rows]
    assert verdicts == [OK, BREAK, BREAK, BREAK]


def test_a_keyed_chain_without_key_gives_gaps_then_looks_keyed() -> None:
    """No key configured and the links fail as SHA-256: no break at all, one conclusion."""
    rows = chain_rows(6, ChainHasher(b"the producer's key"))
    judge = ChainJudge(ChainState(), ChainHasher())
    verdicts = [judge.judge(row["prev_hash"], ChainHasher().row_hash(row)).verdict for row in rows[: KEYED_EVIDENCE + 1]]
    assert verdicts == [OK] + [GAP] * KEYED_EVIDENCE and judge.looks_keyed and judge.state.breaks == 0


def test_an_unkeyed_chain_proves_itself_and_then_breaks_normally() -> None:
    rows = chain_rows(8)
    rows[4] = {**rows[4], "tool": "Bash"}
    judge = ChainJudge(ChainState(), ChainHasher())
    verdicts = [judge.judge(row["prev_hash"], ChainHasher().row_hash(row)).verdict for row in rows]
    assert at(verdicts, BREAK) == [6] and not judge.looks_keyed


def test_a_row_naming_a_torn_read_of_a_line_across_a_page_is_a_fork(tmp_path: Any) -> None:
    """The producer hashed the last line while another writer's append of it had reached only the
    page boundary: the row names the cut line. Not tampering; `verify` and the daemon agree."""
    from audit_otlp.commands.verify import verify_files

    hasher = ChainHasher()
    lines: list[bytes] = []
    prev = GENESIS
    while sum(len(x) + 1 for x in lines) < 4096 - 200:
        row = {"event": "tool_use", "seq": len(lines), "target": "x" * 50, "prev_hash": prev}
        lines.append(orjson.dumps(row))
        prev = hasher.row_hash(row)
    offset = sum(len(x) + 1 for x in lines)
    assert 4096 - 200 <= offset < 4096 - 60  # the next line crosses offset 4096
    crossing = orjson.dumps({"event": "tool_use", "seq": 999, "target": "y" * 200, "prev_hash": prev})
    lines.append(crossing)
    cut = crossing[: 4096 - offset]
    lines.append(orjson.dumps({"event": "tool_use", "seq": 1000, "prev_hash": hasher.hash_canonical(cut)}))
    path = tmp_path / "torn.jsonl"
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    report = verify_files([path], hasher)
    assert report.counts()["break"] == 0 and report.counts()["fork"] == 1
    lines[-1] = orjson.dumps({"event": "tool_use", "seq": 1000, "prev_hash": hasher.hash_canonical(cut[:-1])})
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    assert verify_files([path], hasher).counts()["break"] == 1  # any other cut is a break
