"""The checkpoint: one explicit, versioned record of where delivery stands, and its JSON form.

Version 2 (docs/checkpoint.md shows a sample) is a map of sources, one entry per audit log
followed, keyed by its configured path. Each `SourceState` holds:
- `position`: where the oldest undelivered row starts (the file version's identity, the offset,
  the SHA-256 and length of the line just before it, so a restart can check the offset still
  points where it did) and the hash chain's state there;
- `versions`: every version of the file the daemon holds open or has queued, oldest first, the
  first one holding the position: identity (device, inode, fingerprint of its first KiB), the
  name it was opened under, the size and modification time last seen, where reading it starts
  (`start`; None while unresolved: it may begin with lines already read) and its spool file;
- `recent`: the SHA-256[:16] of the last lines delivered (at most `RECENT_DIGESTS`, oldest
  first), so a tail-rewrite's overlap is skipped after a restart too, and so the mapping can
  tell byte-identical lines apart deterministically (how many identical lines precede one);
- `released`: the last versions read and delivered to their end (never to be read again);
- counters: chain breaks, resume gaps (and the last one's reason), a gap still to be marked
  on the row at `position`, and what the spool bound could not keep.
Plus all-time counters `status` reads without the daemon. A version 1 checkpoint (one cursor)
is migrated on load (`state.migration.read_checkpoint`), never moved aside as corrupt; a newer version than this
code knows is refused, not overwritten. `FORMAT_VERSION` tags the form: a change older readers
cannot read needs a new version and a migration, never a silent reinterpretation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from audit_otlp.source.fileid import FileIdentity
from audit_otlp.source.spool import SpoolRecord

FORMAT_VERSION = 2
RECENT_DIGESTS = 1024  # lines whose digests the checkpoint keeps (the producer's rewrite keeps 1000)
DIGEST_BYTES = 16  # of each line's SHA-256
RELEASED_KEPT = 16


class NewerCheckpointError(ValueError):
    """The checkpoint was written by a newer audit-otlp: refuse it rather than lose it."""


@dataclass(frozen=True)
class Cursor:
    """A position in the audit log just after a line (the start of the next, undelivered row)."""

    path: str
    identity: FileIdentity | None
    offset: int
    last_line_sha256: str | None = None
    last_line_length: int | None = None
    chain_last_hash: str | None = None  # hash of the last row, which the next row's prev_hash must equal
    line_number: int = 0  # rows read from this file before `offset` (0 when unknown)
    # What the mapping stage needs to judge and name the next lines as it would have without a
    # restart: recent link hashes (forks) and the history length (mapping/chain.py), and the
    # recent line digests, hex, that tell identical lines apart (mapping/ids.py).
    chain_recent: tuple[str, ...] = ()
    chain_seen: int = 0
    recent_digests: tuple[str, ...] = ()
    # Not saved: the tailer's number for the file version, and how many lines it had handed
    # out before this position (the recent-lines window is cut there).
    version: int = field(default=0, compare=False)
    line_index: int = field(default=0, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.identity.to_json() if self.identity else None,
            "offset": self.offset,
            "last_line_sha256": self.last_line_sha256,
            "last_line_length": self.last_line_length,
            "line_number": self.line_number,
            "identity_digests": list(self.recent_digests),
        }

    @classmethod
    def from_json(cls, path: str, doc: Mapping[str, Any], chain: Mapping[str, Any]) -> Cursor:
        offset = doc["offset"]
        if not isinstance(offset, int) or offset < 0:
            raise ValueError("offset must be a non-negative integer")
        return cls(
            path,
            FileIdentity.from_json(doc["file"]) if doc.get("file") else None,
            offset,
            doc.get("last_line_sha256"),
            doc.get("last_line_length"),
            chain.get("last_hash"),
            int(doc.get("line_number") or 0),
            # Absent from checkpoints written before forks and identical lines were told apart.
            tuple(str(h) for h in chain.get("recent") or ()),
            int(chain.get("seen") or 0),
            tuple(str(d) for d in doc.get("identity_digests") or ()),
        )


@dataclass(frozen=True)
class VersionState:
    """One version of the file the daemon holds or has queued."""

    identity: FileIdentity
    path: str  # the name it was opened under (it may have another one now)
    size: int  # last seen
    mtime_ns: int  # last seen
    start: int | None  # where reading it starts; None: not resolved yet (it may repeat lines)
    spool: SpoolRecord | None = None  # its undelivered bytes, kept after it vanished
    # A version before it vanished: what, and whether rows were certainly lost (else its first
    # row decides). Kept until that is decided, across restarts.
    gap_if_new: str | None = None
    gap_certain: bool = True
    linked: bool = True  # False: no name pointed to it any more (link count 0): only its spool can hold it

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.identity.to_json(),
            "path": self.path,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "start": self.start,
            "spool": self.spool.to_json() if self.spool else None,
            "gap_if_new": {"what": self.gap_if_new, "certain": self.gap_certain} if self.gap_if_new else None,
            "linked": self.linked,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> VersionState:
        identity = FileIdentity.from_json(doc["file"])
        start = doc.get("start")
        spool = doc.get("spool")
        gap = doc.get("gap_if_new") or {}
        return cls(
            identity,
            str(doc.get("path") or ""),
            int(doc.get("size") or 0),
            int(doc.get("mtime_ns") or 0),
            None if start is None else int(start),
            SpoolRecord.from_json(identity, spool) if spool else None,
            gap.get("what"),
            bool(gap.get("certain", True)),
            bool(doc.get("linked", True)),
        )


@dataclass(frozen=True)
class SourceState:
    """Everything a restart needs to continue one audit log exactly where delivery stood."""

    position: Cursor
    versions: tuple[VersionState, ...] = ()
    position_index: int | None = 0  # versions[i] holds the position; None: its version was read and delivered to its end
    recent: tuple[bytes, ...] = ()  # SHA-256[:16] of the last lines delivered, oldest first
    released: tuple[FileIdentity, ...] = ()
    chain_breaks: int = 0
    gap_pending: str | None = None  # the row at `position` is the first after this gap
    resume_gaps: int = 0
    last_gap: str | None = None
    last_gap_unix: float | None = None
    spool_cut_bytes: int = 0  # undelivered bytes the spool bound could not keep, all time
    spool_cut_lines: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "position": {**self.position.to_json(), "in_version": self.position_index},
            "versions": [v.to_json() for v in self.versions],
            "recent_lines": {"digest": f"sha256[:{DIGEST_BYTES}]", "hex": [d.hex() for d in self.recent]},
            "released": [i.to_json() for i in self.released],
            "chain": {
                "last_hash": self.position.chain_last_hash,
                "breaks": self.chain_breaks,
                "recent": list(self.position.chain_recent),
                "seen": self.position.chain_seen,
            },
            "gap_pending": self.gap_pending,
            "resume_gaps": {"count": self.resume_gaps, "last": self.last_gap, "last_unix": self.last_gap_unix},
            "spool_cut": {"bytes": self.spool_cut_bytes, "lines": self.spool_cut_lines},
        }

    @classmethod
    def from_json(cls, path: str, doc: Mapping[str, Any]) -> SourceState:
        chain = doc.get("chain") or {}
        gaps = doc.get("resume_gaps") or {}
        cut = doc.get("spool_cut") or {}
        recent = (doc.get("recent_lines") or {}).get("hex") or []
        index = doc["position"].get("in_version", 0)
        return cls(
            Cursor.from_json(path, doc["position"], chain),
            tuple(VersionState.from_json(v) for v in doc.get("versions") or ()),
            None if index is None else int(index),
            tuple(bytes.fromhex(d) for d in recent[-RECENT_DIGESTS:]),
            tuple(FileIdentity.from_json(i) for i in doc.get("released") or ()),
            int(chain.get("breaks") or 0),
            doc.get("gap_pending"),
            int(gaps.get("count") or 0),
            gaps.get("last"),
            gaps.get("last_unix"),
            int(cut.get("bytes") or 0),
            int(cut.get("lines") or 0),
        )

    @property
    def says_nothing(self) -> bool:
        """Nothing was delivered or held yet: start as if there were no checkpoint."""
        p = self.position
        return not (p.offset or p.last_line_sha256 or p.identity or self.versions)


@dataclass(frozen=True)
class Checkpoint:
    """What survives a crash: each source's state, plus the counters `status` reads without the daemon."""

    sources: Mapping[str, SourceState]
    delivered_spans: int = 0  # spans acknowledged with 2xx, all time, minus rejected
    last_success_unix: float | None = None
    last_error: str | None = None
    updated_unix: float = field(default_factory=time.time)
    endpoint: str | None = None  # where the last run sent (masked: no userinfo, no query values), for status
    migrated_from: int | None = field(default=None, compare=False)  # the format it was read from, if older

    @classmethod
    def empty(cls, path: str) -> Checkpoint:
        return cls({path: SourceState(Cursor(path, None, 0))})

    def source(self, path: str) -> SourceState:
        """The state of `path` (a new source: nothing delivered yet)."""
        return self.sources.get(path) or SourceState(Cursor(path, None, 0))

    def keyed_for(self, path: str) -> Checkpoint:
        """With one source under another name (--file changed), that state under `path`."""
        if path in self.sources or len(self.sources) != 1:
            return self
        (only,) = self.sources.values()
        return replace(self, sources={path: replace(only, position=replace(only.position, path=path))})

    @property
    def chain_breaks(self) -> int:
        return sum(s.chain_breaks for s in self.sources.values())

    def with_source(self, path: str, state: SourceState, **changes: Any) -> Checkpoint:
        sources = {**self.sources, path: state}
        return replace(self, sources=sources, updated_unix=time.time(), **changes)

    def to_json(self) -> bytes:
        doc = {
            "version": FORMAT_VERSION,
            "sources": {path: state.to_json() for path, state in self.sources.items()},
            "delivered_spans": self.delivered_spans,
            "last_success_unix": self.last_success_unix,
            "last_error": self.last_error,
            "updated_unix": self.updated_unix,
            "endpoint": self.endpoint,
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Checkpoint:
        """A format-2 document (older formats: `state.migration.read_checkpoint`)."""
        return cls.from_doc(orjson.loads(data))

    @classmethod
    def from_doc(cls, doc: Any) -> Checkpoint:
        version = doc.get("version") if isinstance(doc, dict) else None
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise NewerCheckpointError(
                f"checkpoint format version {version} is newer than this audit-otlp reads ({FORMAT_VERSION})"
            )
        if version != FORMAT_VERSION or not isinstance(doc.get("sources"), dict):
            raise ValueError(f"unsupported checkpoint version {version!r}")
        return cls(
            {str(path): SourceState.from_json(str(path), state) for path, state in doc["sources"].items()},
            int(doc.get("delivered_spans") or 0),
            doc.get("last_success_unix"),
            doc.get("last_error"),
            float(doc.get("updated_unix") or 0.0),
            doc["endpoint"] if isinstance(doc.get("endpoint"), str) else None,
        )
