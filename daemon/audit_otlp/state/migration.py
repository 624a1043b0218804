"""Older checkpoint formats, read into today's `Checkpoint` (never moved aside as corrupt).

Version 1 held one cursor: the file's identity, the offset after the last delivered row, that
row's SHA-256 and length, and the chain's last hash. It becomes version 2's single source with
that position, no versions list (the resume search then looks for the position's file among the
current file and its siblings, by identity and then by the last delivered line's content, as
version 1 did) and an empty recent-lines window (filled from the lines before the position).
The next checkpoint write stores version 2.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from audit_otlp.state.checkpoint import Checkpoint, Cursor, SourceState

log = logging.getLogger(__name__)


def from_v1(doc: Mapping[str, Any]) -> Checkpoint:
    """A version 1 document as a version 2 checkpoint (raises ValueError/KeyError when broken)."""
    path = str(doc["path"])
    chain = doc.get("chain") or {}
    # A v1 file written by this session's builds may carry the identity window as recent_digests.
    position = Cursor.from_json(path, {**doc, "identity_digests": doc.get("recent_digests") or ()}, chain)
    source = SourceState(position, chain_breaks=int(chain.get("breaks") or 0))
    log.info("checkpoint format version 1 read (%s at byte %d); it is saved as version 2 from now on", path, position.offset)
    return Checkpoint(
        {path: source},
        int(doc.get("delivered_spans") or 0),
        doc.get("last_success_unix"),
        doc.get("last_error"),
        float(doc.get("updated_unix") or 0.0),
        doc["endpoint"] if isinstance(doc.get("endpoint"), str) else None,
        migrated_from=1,
    )


def read_checkpoint(data: bytes) -> Checkpoint:
    """A checkpoint file's bytes in any format this code reads, as the current format."""
    doc = orjson.loads(data)
    if isinstance(doc, dict) and doc.get("version") == 1:
        return from_v1(doc)
    return Checkpoint.from_doc(doc)
