"""The daemon's live state, shared by health checks, sd_notify STATUS, the progress line, the
Prometheus metrics and the checkpoint: every count is kept here once and read by the others."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RunState:
    checkpoint_loaded: bool = False
    file_reachable: bool = False
    delivered_spans: int = 0  # this run, acknowledged with 2xx minus rejected
    rejected_spans: int = 0
    dead_lettered_spans: int = 0
    rows_read: int = 0
    chain_breaks: int = 0  # this run
    # All-time counts up to this run, from the checkpoint (which stores all-time counts).
    delivered_before: int = 0
    chain_breaks_before: int = 0
    last_success_unix: float | None = None
    last_error: str | None = None
    failing_since: float | None = None  # monotonic time of the first failure since the last 2xx
    checkpoint_error: str | None = None
    backlog_bytes: int = 0
    loop_heartbeat: float = field(default_factory=time.monotonic)

    def export_succeeded(self, delivered: int, rejected: int) -> None:
        self.delivered_spans += delivered
        self.rejected_spans += rejected
        self.last_success_unix = time.time()
        self.failing_since = None

    def all_time_delivered(self) -> int:
        return self.delivered_before + self.delivered_spans

    def all_time_chain_breaks(self) -> int:
        return self.chain_breaks_before + self.chain_breaks

    def export_failed(self, error: str) -> None:
        self.last_error = error
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def failing_for(self) -> float:
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since
