"""What the daemon says about itself while it runs: the backlog gauge, the sd_notify STATUS line
and the progress snapshot of the foreground view, all read from `RunState` and the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.pipeline import Pipeline
from audit_otlp.runtime.progress import Progress
from audit_otlp.runtime.runstate import RunState
from audit_otlp.source.tailer import Tailer


class Reporting:
    def __init__(
        self, path: Path, tailer: Tailer, state: RunState, metrics: Metrics, pipeline: Callable[[], Pipeline | None]
    ) -> None:
        self.path = path
        self.tailer = tailer
        self.state = state
        self.metrics = metrics
        self._pipeline = pipeline  # built only once the checkpoint is loaded

    def refresh_gauges(self) -> None:
        pipeline = self._pipeline()
        backlog = pipeline.backlog_bytes() if pipeline is not None else self.tailer.backlog_bytes()
        self.state.backlog_bytes = backlog
        self.metrics.backlog_bytes.set(backlog)

    def progress(self) -> Progress:
        self.refresh_gauges()
        pipeline = self._pipeline()
        settled = (pipeline.settled_spans, pipeline.settled_bytes) if pipeline is not None else (0, 0)
        return Progress(settled[0], settled[1], self.state.backlog_bytes)

    def status_line(self) -> str:
        self.refresh_gauges()
        state, pipeline = self.state, self._pipeline()
        waiting = "" if self.tailer.current is not None or self.tailer.draining else f"waiting for {self.path}; "
        in_flight = pipeline.acks.unsettled if pipeline is not None else 0
        return (
            f"{waiting}delivered {state.delivered_spans} spans of {state.rows_read} rows read, "
            f"backlog {state.backlog_bytes} bytes, "
            f"{in_flight} batches in flight" + (f", last error: {state.last_error}" if state.failing_since is not None else "")
        )
