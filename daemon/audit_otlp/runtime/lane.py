"""One audit log on its way through the pipeline (runtime/pipeline.py): its tailer, its mapping
stage and open batch, its acknowledgement frontier, and when its mapping moves to the helper."""

from __future__ import annotations

from dataclasses import dataclass, field

from audit_otlp.delivery.batching import BatchBuilder, SpanBudget
from audit_otlp.delivery.encoding import Encoding
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.runtime.maphelper import MapHelper
from audit_otlp.source.tailer import LineChunk, Tailer
from audit_otlp.state.acks import AckTracker


@dataclass
class Lane:
    """One audit log on its way: its tailer, its mapping stage (its own chain), its open batch
    and its acknowledgement frontier."""

    path: str  # the source's name in the checkpoint
    tailer: Tailer
    mapper: RowMapper
    builder: BatchBuilder
    acks: AckTracker = field(default_factory=AckTracker)
    unsettled_bytes: int = 0  # bytes of lines read but not yet settled
    breaks_before: int = 0  # chain breaks of this source before this run (from the checkpoint)
    encoding: Encoding | None = None  # what the mapping helper encodes spans with (None: no helper)
    span_source: str | None = None  # with several audit logs, the name every span carries
    cutter: SpanBudget = field(init=False)  # where the mapping stage cuts batches (mapchunk.py)
    helper: MapHelper | None = None  # the mapping helper process, while it maps this lane

    def __post_init__(self) -> None:
        self.cutter = SpanBudget(self.builder.envelope, self.builder.limits)
        self.tailer.queue.gaps.links = self.links

    def links(self, data: bytes) -> bool | None:
        """Does this line name the last row mapped as its parent (how the tailer decides a gap)?
        Not known while the helper maps: the daemon's copy of the chain is behind."""
        return None if self.helper is not None else self.mapper.links(data)

    def backlog_bytes(self) -> int:
        return self.tailer.backlog_bytes() + self.unsettled_bytes

    # -- the mapping helper (runtime/maphelper.py): when this lane's mapping moves there ---------

    def helper_pays(self, minimum: int | None, chunk: LineChunk) -> bool:
        """Start the helper for a backlog over `minimum` (mapping.helper_min_backlog), unless the
        tailer still has a question only the lane's own chain can answer (a version that vanished
        while stopped: gaps.py)."""
        if minimum is None or self.encoding is None or self.tailer.backlog_bytes() < minimum:
            return False
        return self.helper_may_map(minimum, chunk) and not any(f.gap_if_new is not None for f in self.tailer.queue.files)

    def helper_may_map(self, minimum: int | None, chunk: LineChunk) -> bool:
        """Keep the helper while a backlog lasts; a line over source.max_line_bytes (its data
        not kept) is mapped here."""
        return self.tailer.backlog_bytes() >= (minimum or 0) // 8 and all(line.data is not None for line in chunk.lines)
