"""The checkpoint: a versioned record, written atomically, recovered loudly when corrupt."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from audit_otlp.source.fileid import FileIdentity
from audit_otlp.state.checkpoint import Checkpoint, Cursor
from audit_otlp.state.store import CheckpointError, CheckpointStore

IDENTITY = FileIdentity(dev=64769, ino=1234, fingerprint="ab" * 32, fingerprint_len=1024)


def sample() -> Checkpoint:
    cursor = Cursor("state/audit.jsonl", IDENTITY, 4096, "cd" * 32, 321, "aGFzaA==", 17)
    return Checkpoint(cursor, delivered_spans=99, last_success_unix=1.5e9, chain_breaks=2)


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.json")
    store.save(sample())
    loaded = store.load()
    assert loaded is not None
    assert loaded.cursor == sample().cursor
    assert (loaded.delivered_spans, loaded.chain_breaks, loaded.last_success_unix) == (99, 2, 1.5e9)


def test_saved_document_names_version_path_identity_offset_and_last_line(tmp_path: Path) -> None:
    import json

    store = CheckpointStore(tmp_path / "cp.json")
    store.save(sample())
    doc = json.loads((tmp_path / "cp.json").read_text())
    assert doc["version"] == 1
    assert doc["path"] == "state/audit.jsonl"
    assert doc["file"] == {"dev": 64769, "ino": 1234, "fingerprint": "ab" * 32, "fingerprint_len": 1024}
    assert doc["offset"] == 4096 and doc["last_line_sha256"] == "cd" * 32


def test_missing_checkpoint_means_none(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "absent.json").load() is None


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b'{"version": 99, "offset": 1}', b'{"version": 1, "offset": -5, "path": "x"}', b"[]"]
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
    with pytest.raises(CheckpointError):
        store.save(sample().with_cursor(Cursor("x", None, 1)))
    assert (tmp_path / "cp.json").read_bytes() == before


def test_checkpoint_file_is_private(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.json")
    store.save(sample())
    assert os.stat(tmp_path / "cp.json").st_mode & 0o077 == 0
