"""Drive a Tailer in-process like the daemon does: read, 'deliver', keep a resume point, crash
(drop everything but the resume point) and restart. Used by the tailer and property tests."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from audit_otlp.source.resume import ResumePoint
from audit_otlp.source.tailer import Tailer


@dataclass
class RecordingEvents:
    rotations: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    held: tuple[int, int] = (0, 0)

    def rotation(self, kind: str, path: Path) -> None:
        self.rotations.append(kind)

    def resume_gap(self, reason: str) -> None:
        self.gaps.append(reason)

    def held_files(self, count: int, pending_bytes: int) -> None:
        self.held = (count, pending_bytes)


@dataclass
class Reader:
    path: Path
    poll_interval: float = 0.05
    rotate_quiet: float = 0.0
    max_line_bytes: int = 1 << 20
    seqs: list[int] = field(default_factory=list)
    other_lines: list[bytes] = field(default_factory=list)
    resume: ResumePoint | None = None
    events: RecordingEvents = field(default_factory=RecordingEvents)
    tailer: Tailer | None = None

    async def start(self) -> None:
        self.tailer = Tailer(
            self.path,
            max_line_bytes=self.max_line_bytes,
            poll_interval=self.poll_interval,
            events=self.events,
            rotate_quiet=self.rotate_quiet,
        )
        await self.tailer.start(self.resume)

    async def drain(self, limit: float = 10.0) -> None:
        """Read until the tailer is at the end of everything."""
        assert self.tailer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            chunk = await self.tailer.read(0.0)
            if chunk is None:
                if self.tailer.at_end:
                    return
                continue
            for line in chunk.lines:
                if line.data is not None and line.data.strip():
                    try:
                        self.seqs.append(orjson.loads(line.data)["seq"])
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        self.other_lines.append(line.data)
                digest = line.digest.hex()
                self.resume = ResumePoint(chunk.identity, line.end, digest, line.length if line.data is not None else None)
        raise AssertionError("the tailer did not reach the end in time")

    async def tick(self) -> None:
        """One monitor cycle (what the background task does on a wake-up), for determinism."""
        assert self.tailer is not None
        await self.tailer.poll()

    async def crash(self) -> None:
        """Lose everything but the resume point (the checkpoint), then start again."""
        assert self.tailer is not None
        await self.tailer.close()
        await self.start()

    async def stop(self) -> None:
        if self.tailer is not None:
            await self.tailer.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
