"""What the daemon says about itself while it runs: the backlog gauge and the sd_notify STATUS
line, read from `RunState` and the pipeline (the foreground view's snapshot: `runtime.foreground`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from audit_otlp.runtime.logs import counted
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.pipeline import Pipeline
from audit_otlp.runtime.runstate import RunState
from audit_otlp.runtime.sdnotify import Notifier
from audit_otlp.source.tailer import Tailer


class Reporting:
    def __init__(self, tailers: list[Tailer], state: RunState, metrics: Metrics, pipeline: Callable[[], Pipeline | None]) -> None:
        self.tailers = tailers
        self.state = state
        self.metrics = metrics
        self._pipeline = pipeline  # built only once the checkpoint is loaded

    def refresh_gauges(self) -> None:
        pipeline = self._pipeline()
        backlog = pipeline.backlog_bytes() if pipeline is not None else sum(t.backlog_bytes() for t in self.tailers)
        self.state.backlog_bytes = backlog
        self.metrics.backlog_bytes.set(backlog)

    def status_line(self) -> str:
        self.refresh_gauges()
        state, pipeline = self.state, self._pipeline()
        missing = [str(t.path) for t in self.tailers if t.current is None and not t.draining]
        waiting = f"waiting for {', '.join(missing)}; " if missing else ""
        in_flight = pipeline.unsettled if pipeline is not None else 0
        return (
            f"{waiting}delivered {counted(state.delivered_spans, 'span')} of {counted(state.rows_read, 'row')} read, "
            f"backlog {counted(state.backlog_bytes, 'byte')}, "
            f"{counted(in_flight, 'batch')} in flight"
            + (f", last error: {state.last_error}" if state.failing_since is not None else "")
        )

    async def heartbeat(self, notifier: Notifier) -> None:
        """Event-loop liveness for /healthz and the systemd watchdog, plus a STATUS refresh."""
        interval = min(notifier.watchdog_interval() or 5.0, 5.0)
        while True:
            self.state.loop_heartbeat = time.monotonic()
            notifier.watchdog()
            notifier.status(self.status_line())
            await asyncio.sleep(interval)
