"""Property: over any interleaving of append / rotate(style) / crash / collector-down steps, the
rows read are exactly the rows written, in order, once each.

The tailer runs in-process on real files. "Collector down" means the reader stops reading while
the monitor keeps watching (one `tick()` per step, as its wake-up would); "crash" throws away
the tailer and restarts it from the last delivered line, like the checkpoint does.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.auditgen import AuditWriter
from tests.helpers.rotation import rotate
from tests.helpers.tailer_reader import Reader

STEP = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 25)),
    st.tuples(st.just("rotate"), st.sampled_from(["rename", "tail_rewrite", "copytruncate"])),
    st.tuples(st.just("crash"), st.just(0)),
    st.tuples(st.just("down"), st.just(0)),
    st.tuples(st.just("up"), st.just(0)),
    st.tuples(st.just("read"), st.just(0)),
)


async def run_steps(directory: Path, steps: list[tuple[str, int]]) -> tuple[list[int], int, list[str]]:
    log = directory / "audit.jsonl"
    writer = AuditWriter(log)
    writer.append(1)
    reader = Reader(log)
    await reader.start()
    await reader.drain()
    down = False
    try:
        for kind, arg in steps:
            if kind == "append":
                writer.append(arg)
            elif kind == "rotate":
                rotate(log, ("rename", "tail_rewrite", "copytruncate")[arg] if isinstance(arg, int) else arg)
            elif kind == "crash":
                await reader.crash()
            elif kind == "down":
                down = True
            elif kind == "up":
                down = False
            if down:
                await reader.tick()
            elif kind == "read" or kind == "up":
                await reader.drain()
        await reader.drain()
    finally:
        await reader.stop()
    return reader.seqs, writer.seq, reader.events.gaps


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, max_size=25))
def test_any_interleaving_loses_and_repeats_nothing(steps: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        seqs, written, gaps = asyncio.run(run_steps(Path(directory), steps))
    assert gaps == []
    assert seqs == list(range(1, written + 1))


@pytest.mark.slow
@settings(max_examples=1500, deadline=None)
@given(steps=st.lists(STEP, max_size=60))
def test_any_interleaving_long(steps: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        seqs, written, gaps = asyncio.run(run_steps(Path(directory), steps))
    assert gaps == []
    assert seqs == list(range(1, written + 1))
