"""The checkpoint: a versioned record (format 2: a map of sources), written atomically, migrated
from format 1 (real files written by the format-1 daemon), recovered loudly when corrupt."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from audit_otlp.source.fileid import FileIdentity
from audit_otlp.source.spool import SpoolRecord
from audit_otlp.state.checkpoint import (
    RECENT_DIGESTS,
    Checkpoint,
    Cursor,
    NewerCheckpointError,
    SourceState,
    VersionState,
)
from audit_otlp.state.store import CheckpointError, CheckpointStore
from tests.helpers.paths import TEST_DATA

IDENTITY = FileIdentity(dev=64769, ino=1234, fingerprint="ab" * 32, fingerprint_len=1024)
ROTATED = FileIdentity(dev=64769, ino=99, fingerprint="ef" * 32, fingerprint_len=1024)
V1 = TEST_DATA / "checkpoint_v1"


def sample() -> Checkpoint:
    cursor = Cursor("state/audit.jsonl", IDENTITY, 4096, "cd" * 32, 321, "aGFzaA==", 17)
    spool = SpoolRecord(ROTATED, 100, 5000, 5000)
    versions = (
        VersionState(IDENTITY, "state/audit.jsonl.1", 9000, 1_700_000_000_000_000_000, 0),
        VersionState(ROTATED, "state/audit.jsonl", 5000, 1_700_000_000_500_000_000, None, spool),
    )
    recent = tuple(bytes([i % 256]) * 16 for i in range(RECENT_DIGESTS))
    source = SourceState(cursor, versions, 0, recent, (ROTATED,), chain_breaks=2, resume_gaps=1, last_gap="rows 5-9 vanished")
    return Checkpoint({"state/audit.jsonl": source}, delivered_spans=99, last_success_unix=1.5e9)


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.json")
    store.save(sample())
    loaded = store.load()
    assert loaded is not None
    assert loaded.sources == sample().sources
    assert (loaded.delivered_spans, loaded.chain_breaks, loaded.last_success_unix) == (99, 2, 1.5e9)
    assert loaded.migrated_from is None


def test_saved_document_is_a_map_of_sources_with_position_versions_and_recent_lines(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.json")
    store.save(sample())
    doc = json.loads((tmp_path / "cp.json").read_text())
    assert doc["version"] == 2
    source = doc["sources"]["state/audit.jsonl"]
    position = source["position"]
    assert position["file"] == {"dev": 64769, "ino": 1234, "fingerprint": "ab" * 32, "fingerprint_len": 1024}
    assert position["offset"] == 4096 and position["last_line_sha256"] == "cd" * 32 and position["in_version"] == 0
    assert [v["start"] for v in source["versions"]] == [0, None]  # None: not resolved yet
    assert source["versions"][1]["spool"]["file"].endswith(".spool")
    # The documented field helper sim13 (identical lines, issue 13) reads: hex SHA-256[:16], oldest first.
    assert source["recent_lines"]["digest"] == "sha256[:16]" and len(source["recent_lines"]["hex"]) == RECENT_DIGESTS
    assert source["recent_lines"]["hex"][1] == "01" * 16
    assert source["chain"] == {"last_hash": "aGFzaA==", "breaks": 2, "recent": [], "seen": 0}
    assert source["resume_gaps"]["count"] == 1


@pytest.mark.parametrize("case", ["mid_file", "renamed"])
def test_a_real_version_1_checkpoint_is_migrated_not_moved_aside(tmp_path: Path, case: str) -> None:
    shutil.copy(V1 / case / "checkpoint.json", tmp_path / "cp.json")
    v1 = json.loads((tmp_path / "cp.json").read_text())
    store = CheckpointStore(tmp_path / "cp.json")
    loaded = store.load()
    assert loaded is not None and loaded.migrated_from == 1
    assert list(tmp_path.glob("*corrupt*")) == []
    source = loaded.source(v1["path"])
    assert not source.says_nothing
    assert source.position.offset == v1["offset"] and source.position.last_line_sha256 == v1["last_line_sha256"]
    assert source.position.identity == FileIdentity.from_json(v1["file"])
    assert source.position.chain_last_hash == v1["chain"]["last_hash"] and source.chain_breaks == v1["chain"]["breaks"]
    assert source.versions == () and source.recent == ()  # the resume search fills these
    assert loaded.delivered_spans == v1["delivered_spans"]
    store.save(loaded)  # written back as format 2
    assert json.loads((tmp_path / "cp.json").read_text())["version"] == 2


def test_a_renamed_source_path_still_finds_its_only_state() -> None:
    """--file changed (the checkpoint names another path): its one source is taken for it (and
    then matched by file identity and content); with several sources, names decide."""
    moved = sample().keyed_for("/elsewhere/audit.jsonl")
    assert moved.source("/elsewhere/audit.jsonl").position.offset == 4096 and list(moved.sources) == ["/elsewhere/audit.jsonl"]
    assert sample().source("/elsewhere/audit.jsonl").says_nothing


def test_a_checkpoint_from_a_newer_version_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    path.write_text('{"version": 3, "sources": {}}')
    with pytest.raises(NewerCheckpointError):
        CheckpointStore(path).load()
    assert path.exists() and list(tmp_path.glob("*corrupt*")) == []


def test_missing_checkpoint_means_none(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "absent.json").load() is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"version": 2, "sources": []}',
        b'{"version": 1, "offset": -5, "path": "x"}',
        b"[]",
        b'{"version": "2"}',
    ],
)
def test_corrupt_checkpoint_is_moved_aside_loudly(tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cp.json"
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR):
        assert CheckpointStore(path).load() is None
    assert not path.exists()
    assert len(list(tmp_path.glob("cp.json.corrupt-*"))) == 1
    assert "CHECKPOINT CORRUPT" in caplog.text


def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.json")
    store.save(sample())
    before = (tmp_path / "cp.json").read_bytes()
    # Make the temp file's name a directory: the write fails the way a full disk would.
    (tmp_path / ".cp.json.tmp").mkdir()
    moved = replace(sample().source("state/audit.jsonl"), position=Cursor("x", None, 1))
    with pytest.raises(CheckpointError):
        store.save(sample().with_source("state/audit.jsonl", moved))
    assert (tmp_path / "cp.json").read_bytes() == before


def test_checkpoint_file_is_private(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.json")
    store.save(sample())
    assert os.stat(tmp_path / "cp.json").st_mode & 0o077 == 0
