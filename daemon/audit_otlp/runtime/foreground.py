"""What `run --foreground` shows on a terminal, gathered from the running daemon: the snapshot the
live line is drawn from, and the backlog's rows, counted now and then by the same search
`audit-otlp status` uses (`source.backlog`), so the two never disagree."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from audit_otlp.config import Config
from audit_otlp.runtime.pipeline import Pipeline
from audit_otlp.runtime.progress import ProgressReporter, TerminalLine
from audit_otlp.runtime.runstate import RunState
from audit_otlp.runtime.statusline import Progress
from audit_otlp.source.backlog import find_backlog
from audit_otlp.source.sources import rotated_glob_for, several
from audit_otlp.state.keeper import CheckpointKeeper

COUNT_EVERY = 0.5  # seconds between two looks at whether the backlog's rows need counting again
COUNT_LIMIT = 8 * 1024 * 1024  # a larger backlog shows its bytes only: counting it would cost a read of it all


class ForegroundView:
    def __init__(
        self,
        line: TerminalLine,
        config: Config,
        state: RunState,
        pipeline: Pipeline,
        keeper: CheckpointKeeper,
        refresh: Callable[[], None],
    ) -> None:
        self.line = line
        self.config = config
        self.state = state
        self.pipeline = pipeline
        self.keeper = keeper
        self.refresh = refresh  # brings state.backlog_bytes up to date
        self._counted: tuple[int, int] | None = None  # (bytes, rows) of the last count of the backlog

    def snapshot(self) -> Progress:
        self.refresh()
        state = self.state
        return Progress(
            self.pipeline.settled_spans,
            self.pipeline.settled_bytes,
            state.backlog_bytes,
            delivered=state.delivered_spans,
            backlog_rows=self._rows_for(state.backlog_bytes),
            last_success_unix=state.last_success_unix or self.keeper.current.last_success_unix,
            retrying=state.requests_retrying,
            last_error=state.last_error if state.failing_since is not None else None,
            dead_lettered=state.dead_lettered_spans,
            chain_verified=self.config.chain.verify,
            chain={"break": state.chain_breaks, "fork": state.chain_forks},  # this run, as `delivered`
        )

    def _rows_for(self, backlog_bytes: int) -> int | None:
        """The last count, if it was of this backlog (same bytes); None while it is being counted."""
        if backlog_bytes == 0:
            return 0
        if self._counted is not None and self._counted[0] == backlog_bytes:
            return self._counted[1]
        return None

    async def count_rows(self) -> None:
        """Count the backlog's rows whenever its size changed (at most every COUNT_EVERY s)."""
        source = self.config.source
        is_several = several(source.paths, [Path(p) for p in self.keeper.current.sources])
        while True:
            backlog_bytes = self.state.backlog_bytes
            if 0 < backlog_bytes <= COUNT_LIMIT and (self._counted is None or self._counted[0] != backlog_bytes):
                # From the settled positions, as a restart (and `status`) would find them.
                pending_bytes = pending_rows = 0
                for path, state in self.keeper.compose().sources.items():
                    pattern = rotated_glob_for(path, is_several, source.rotated_glob)
                    found = await asyncio.to_thread(find_backlog, Path(path), pattern, state, source.max_line_bytes)
                    pending_bytes += found.pending_bytes
                    pending_rows += found.pending_rows
                self._counted = (pending_bytes, pending_rows)
            await asyncio.sleep(COUNT_EVERY)

    async def run(self) -> None:
        reporter = ProgressReporter(self.line, self.snapshot)
        await asyncio.gather(reporter.run(), self.count_rows())
