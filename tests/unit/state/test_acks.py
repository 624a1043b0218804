"""Ordered acknowledgement: the frontier never passes a batch that is not settled."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from audit_otlp.state.acks import AckTracker
from audit_otlp.state.checkpoint import Cursor


def cursor(end: int) -> Cursor:
    return Cursor("audit.jsonl", None, end)


@given(st.integers(1, 40).flatmap(lambda n: st.permutations(list(range(n)))))
def test_frontier_is_the_end_of_the_longest_settled_prefix(order: list[int]) -> None:
    acks = AckTracker()
    ends = [(i + 1) * 100 for i in range(len(order))]
    seqs = [acks.register(cursor(e)) for e in ends]
    settled: set[int] = set()
    checkpoint = 0
    for seq in order:
        settled.add(seq)
        frontier = acks.settle(seqs[seq])
        if frontier is not None:
            assert frontier.offset > checkpoint
            checkpoint = frontier.offset
        lowest_unsettled = next((i for i in range(len(order)) if i not in settled), None)
        # never ahead of the first row of the lowest batch not yet acknowledged
        if lowest_unsettled is not None:
            first_row_of_unsettled = lowest_unsettled * 100
            assert checkpoint == first_row_of_unsettled
        else:
            assert checkpoint == ends[-1]
    assert acks.unsettled == 0


def test_registration_while_settling_interleaves() -> None:
    acks = AckTracker()
    a = acks.register(cursor(10))
    b = acks.register(cursor(20))
    assert acks.settle(b) is None
    c = acks.register(cursor(30))
    assert acks.settle(c) is None
    assert acks.settle(a) == cursor(30)
    assert acks.unsettled == 0
