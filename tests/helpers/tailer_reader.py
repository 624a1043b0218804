"""Drive a Tailer in-process like the daemon does: read, 'deliver' (every line at once, as a 2xx
would), keep what a checkpoint would (`resume`: the tailer's own snapshot at the delivered
position), crash (drop everything but that) and restart. Used by the tailer and property tests."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson

from audit_otlp.mapping.chain import ChainHasher
from audit_otlp.source.spool import Spool, SpoolRecord
from audit_otlp.source.tailer import Tailer
from audit_otlp.state.checkpoint import Cursor, SourceState

HASHER = ChainHasher()  # tests.helpers.auditgen chains its rows with the plain SHA-256 chain


@dataclass
class RecordingEvents:
    rotations: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    held: tuple[int, int] = (0, 0)
    spools: list[SpoolRecord] = field(default_factory=list)
    spool_errors: list[str] = field(default_factory=list)

    def rotation(self, kind: str, path: Path) -> None:
        self.rotations.append(kind)

    def resume_gap(self, reason: str) -> None:
        self.gaps.append(reason)

    def held_files(self, count: int, pending_bytes: int) -> None:
        self.held = (count, pending_bytes)

    def spooled(self, path: Path, record: SpoolRecord) -> None:
        self.spools.append(record)

    def spool_failed(self, path: Path, reason: str) -> None:
        self.spool_errors.append(reason)


@dataclass
class Reader:
    path: Path
    poll_interval: float = 0.05
    rotate_quiet: float = 0.0
    max_line_bytes: int = 1 << 20
    seqs: list[int] = field(default_factory=list)
    other_lines: list[bytes] = field(default_factory=list)
    resume: SourceState | None = None
    events: RecordingEvents = field(default_factory=RecordingEvents)
    tailer: Tailer | None = None
    spool_dir: Path | None = None  # spool vanished versions there (as the daemon does)
    spool_max_bytes: int = 1 << 30
    position: Cursor | None = None
    gap_rows: list[int] = field(default_factory=list)  # seqs of the first row after each gap
    chain_last_hash: str | None = None  # as the mapping stage keeps it
    gap_pending: str | None = None

    async def start(self) -> None:
        spool = Spool(self.spool_dir, self.spool_max_bytes) if self.spool_dir is not None else None
        self.tailer = Tailer(
            self.path,
            max_line_bytes=self.max_line_bytes,
            poll_interval=self.poll_interval,
            events=self.events,
            rotate_quiet=self.rotate_quiet,
            spool=spool,
        )
        await self.tailer.start(self.resume)
        self.tailer.queue.gaps.links = self._links
        base = self.resume.position if self.resume is not None else Cursor(str(self.path), None, 0)
        self.position, gap = self.tailer.start_position(base)
        self.gap_pending = gap if gap is not None else (self.resume.gap_pending if self.resume is not None else None)
        self.resume = self._snapshot()

    def _links(self, data: bytes) -> bool | None:
        """As the mapping stage answers it (RowMapper.links)."""
        try:
            prev = orjson.loads(data).get("prev_hash")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        usable = isinstance(prev, str) and prev != "GENESIS" and self.chain_last_hash
        return prev == self.chain_last_hash if usable else None

    def _snapshot(self) -> SourceState:
        """What the checkpoint would hold now (the keeper keeps a gap's mark until its row is delivered)."""
        assert self.tailer is not None and self.position is not None
        return replace(self.tailer.snapshot(self.position), gap_pending=self.gap_pending)

    async def drain(self, limit: float = 10.0, durable: bool = True) -> None:
        """Read until the tailer is at the end of everything, delivering it all; `durable`: and a
        checkpoint of it is on disk (else the last durable one stays where it was)."""
        assert self.tailer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            chunk = await self.tailer.read(0.0)
            if chunk is None:
                if self.tailer.at_end:
                    return
                continue
            gap = chunk.gap
            for i, line in enumerate(chunk.lines):
                if line.data is not None and line.data.strip():
                    try:
                        row = orjson.loads(line.data)
                        self.seqs.append(row["seq"])
                        self.chain_last_hash = HASHER.line_hash(line.data, row)
                        if gap is not None:
                            self.gap_rows.append(self.seqs[-1])
                            gap = None
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        self.other_lines.append(line.data)
                length = line.length if line.data is not None else None
                self.position = Cursor(
                    str(self.path),
                    chunk.identity,
                    line.end,
                    line.digest.hex(),
                    length,
                    self.chain_last_hash,
                    0,
                    version=chunk.version,
                    line_index=chunk.first_index + i + 1,
                )
            assert self.position is not None
            self.gap_pending = None
            self.resume = self._snapshot()
            if durable:  # the daemon's group commit: a checkpoint right after each delivery
                self.tailer.checkpoint_saved(self.resume)
        raise AssertionError("the tailer did not reach the end in time")

    def checkpoint(self) -> None:
        """What the daemon does once a checkpoint is durable (the spool forgets released versions)."""
        assert self.tailer is not None and self.resume is not None
        self.tailer.checkpoint_saved(self.resume)

    async def tick(self) -> None:
        """One monitor cycle (what the background task does on a wake-up), for determinism."""
        assert self.tailer is not None
        await self.tailer.poll()

    async def crash(self) -> None:
        """Lose everything but the resume point (the checkpoint), then start again."""
        assert self.tailer is not None
        if self.position is not None:
            self.resume = self._snapshot()  # the checkpoint written last
        await self.tailer.close()
        await self.start()

    async def stop(self) -> None:
        """A graceful stop: the final checkpoint, then close."""
        if self.tailer is not None:
            if self.position is not None:
                self.resume = self._snapshot()
            await self.tailer.close()
            self.tailer = None


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
