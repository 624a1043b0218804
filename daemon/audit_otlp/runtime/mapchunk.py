"""One chunk of lines -> encoded spans and the points where a batch ends, in file order.

The mapping half of a read cycle, the same code whether it runs in the daemon or in the mapping
helper process (runtime/maphelper.py): the RowMapper maps each line, a SpanBudget (the batch
builder's arithmetic) says where a request would be full, and each such point, and the chunk's
end, carries what the checkpoint needs to resume just after the last line whose spans all came
before it (the chain and identity-window state at that line). The reader then only appends the
spans and hands over batches at those points (runtime/pipeline.py).
"""

from __future__ import annotations

from typing import NamedTuple

from audit_otlp.delivery.batching import SpanBudget
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.source.lines import Line


class Cut(NamedTuple):
    """Where the checkpoint may stand: after the first `lines` lines of the chunk, with the
    first `spans` spans (a batch handed over here is followed by the rest)."""

    spans: int
    lines: int
    chain_last_hash: str | None
    line_number: int
    chain_recent: tuple[str, ...]
    chain_seen: int
    identity_digests: tuple[str, ...]


class MappedChunk(NamedTuple):
    spans: list[bytes]
    span_lines: list[int]  # for each span, the index of its line in the chunk
    cuts: list[Cut]  # where a batch is full, in order (the last may be the chunk's end)
    end: Cut | None  # after the chunk's last line (None: the chunk had no line)
    chain_breaks: int  # the chain's break count after the chunk


def map_chunk(
    mapper: RowMapper,
    budget: SpanBudget,
    lines: list[Line],
    first_line_number: int,
    observed_ns: int,
    gap: str | None = None,
    kept_here: bool = True,
    link_hashes: list[str | None] | None = None,
) -> MappedChunk:
    """Map `lines` (the first is line `first_line_number` of its file) with `budget` standing
    at the open batch; `gap`: rows before the first line vanished unseen. `kept_here`: the spans
    stay in this process until delivered (not sent on to the daemon). `link_hashes`: each line's
    chain hash, worked out already (rows.link_hashes)."""
    mapper.line_number = first_line_number - 1
    if gap is not None:
        mapper.mark_gap(gap)
    chain, identity = mapper.chain, mapper.identity
    spans: list[bytes] = []
    span_lines: list[int] = []
    cuts: list[Cut] = []
    # (lines done, chain hash, line number, identity window count) after the last complete line
    done = (0, chain.last_hash, mapper.line_number, identity.pushed)

    def cut() -> Cut:
        count, chain_hash, line_number, counted = done
        # The chain's recent links may include the line being mapped now: a superset, which only
        # ever turns a break into a fork after a restart; the digests must be exact.
        return Cut(len(spans), count, chain_hash, line_number, tuple(chain.carried()), chain.seen, identity.carried(counted))

    for i, line in enumerate(lines):
        for span in mapper.map_line(line, observed_ns, link_hashes[i] if link_hashes else None).spans:
            size = len(span)
            if not budget.fits(size):
                cuts.append(cut())
                budget.reset()
            budget.take(size)
            # orjson hands back bytes allocated with much more room than their length (4 KiB and
            # more for a 1.5 KiB span); a batch keeps its spans until they are settled, so keep an
            # exact-size copy (a memcpy, ~0.1 µs). Spans sent to the daemon arrive exact.
            spans.append(memoryview(span).tobytes() if kept_here else span)
            span_lines.append(i)
        done = (i + 1, chain.last_hash, mapper.line_number, identity.pushed)
        if budget.full:
            cuts.append(cut())
            budget.reset()
    end = cut() if lines else None
    return MappedChunk(spans, span_lines, cuts, end, chain.breaks)
