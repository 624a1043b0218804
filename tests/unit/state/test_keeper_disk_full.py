"""A full disk and the spool: the spool file of a version delivered to its end is kept until a
checkpoint stops naming it, so on a disk too small for both the checkpoint could never be
written again (seen once in CI: tests/torture/test_disk.py with a 256 KiB state filesystem).
The keeper then asks the sources to delete those files, and writes again."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.runstate import RunState
from audit_otlp.state.checkpoint import Checkpoint, Cursor, SourceState
from audit_otlp.state.keeper import CheckpointKeeper
from audit_otlp.state.store import CheckpointError, CheckpointStore


class FullDiskStore(CheckpointStore):
    """Refuses writes with ENOSPC until `room` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.room = False
        self.saved: list[Checkpoint] = []

    def save(self, checkpoint: Checkpoint) -> None:
        if not self.room:
            raise CheckpointError("cannot write checkpoint: No space left on device") from OSError(
                errno.ENOSPC, "No space left on device"
            )
        self.saved.append(checkpoint)


class Source:
    def __init__(self, store: FullDiskStore, released_spool: bool) -> None:
        self.store = store
        self.released_spool = released_spool
        self.dropped = 0

    def snapshot(self, position: Cursor) -> SourceState:
        return SourceState(position)

    def checkpoint_saved(self, state: SourceState) -> None:
        pass

    def drop_released_spool(self) -> bool:
        if not self.released_spool:
            return False
        self.released_spool, self.store.room = False, True  # deleting it made room
        self.dropped += 1
        return True


def keeper_with(tmp_path: Path, released_spool: bool) -> tuple[CheckpointKeeper, FullDiskStore, Source]:
    state = RunState()
    store = FullDiskStore(tmp_path / "checkpoint.json")
    keeper = CheckpointKeeper(store, Checkpoint.empty("audit.jsonl"), 0.0, Metrics(state), state, enabled=True)
    source = Source(store, released_spool)
    keeper.started("audit.jsonl", Cursor("audit.jsonl", None, 0), None, source)
    keeper.advance("audit.jsonl", Cursor("audit.jsonl", None, 120))  # a batch settled: a write is due
    return keeper, store, source


def test_a_full_disk_deletes_the_spool_of_a_delivered_version_and_writes_the_checkpoint(tmp_path: Path) -> None:
    keeper, store, source = keeper_with(tmp_path, released_spool=True)
    assert asyncio.run(keeper.flush())
    assert source.dropped == 1 and len(store.saved) == 1


def test_a_full_disk_with_nothing_to_delete_keeps_the_previous_checkpoint_and_retries(tmp_path: Path) -> None:
    keeper, store, source = keeper_with(tmp_path, released_spool=False)
    assert not asyncio.run(keeper.flush())
    assert not store.saved and keeper.state.checkpoint_error is not None
    store.room = True  # space came back: the next write goes through
    assert asyncio.run(keeper.flush()) and store.saved[-1].source("audit.jsonl").position.offset == 120
