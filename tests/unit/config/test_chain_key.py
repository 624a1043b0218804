"""Where the chain key comes from (config/chain_key.py): our settings, then the hydra producer's
(HYDRA_AUDIT_HMAC_KEY, then hmac-key.bin beside the audit log), never the key in the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit_otlp.config.chain_key import ChainKeyError, find_chain_key

HEX = "3f9c2a7d5b1e8f40c6a9d2e7b3f18c5a09d4e6b2a7c3f1e8d5b9a0c4e7f2d6b1"


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    state = tmp_path / "plugins" / "audit-trail" / "state"
    state.mkdir(parents=True)
    (state / "hmac-key.bin").write_text(HEX + "\n")  # as the plugin writes it
    return state / "audit.jsonl"


@pytest.mark.parametrize(
    "name, env, use_key_file, key, source",
    [
        (
            "our variable wins over everything",
            {"AUDIT_OTLP_CHAIN_KEY": "ours", "HYDRA_AUDIT_HMAC_KEY": "theirs"},
            True,
            b"ours",
            "env:AUDIT_OTLP_CHAIN_KEY",
        ),
        ("then our key file", {"HYDRA_AUDIT_HMAC_KEY": "theirs"}, True, b"from-file", "(chain.key_file)"),
        ("then the producer's variable", {"HYDRA_AUDIT_HMAC_KEY": "theirs"}, False, b"theirs", "env:HYDRA_AUDIT_HMAC_KEY"),
        (
            "an empty producer variable counts as unset",
            {"HYDRA_AUDIT_HMAC_KEY": ""},
            False,
            HEX.encode(),
            "hmac-key.bin (the producer's key file)",
        ),
        (
            "then the producer's key file: its text without the newline",
            {},
            False,
            HEX.encode(),
            "hmac-key.bin (the producer's key file)",
        ),
    ],
)
def test_key_sources_in_order(
    audit: Path, tmp_path: Path, name: str, env: dict[str, str], use_key_file: bool, key: bytes, source: str
) -> None:
    key_file = tmp_path / "our.key"
    key_file.write_text("from-file\n")
    found = find_chain_key(env, key_file if use_key_file else None, audit)
    assert found.key == key and found.source.endswith(source) and found.problem is None
    assert key.decode() not in found.source and key.decode() not in repr(found)


@pytest.mark.parametrize("content", [None, b"", b"\n"])
def test_no_key_file_or_an_empty_one_is_plain_sha256(tmp_path: Path, content: bytes | None) -> None:
    if content is not None:
        (tmp_path / "hmac-key.bin").write_bytes(content)  # the plugin would make a new one
    found = find_chain_key({}, None, tmp_path / "audit.jsonl")
    assert found.key is None and found.source == "none" and found.problem is None


def test_an_unreadable_producer_key_is_reported_with_the_fix(audit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_read = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self.name == "hmac-key.bin":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", denied)  # root reads any file: the denial is simulated
    found = find_chain_key({}, None, audit)
    assert found.key is None and "unreadable" in found.source and found.problem is not None
    for fix in ("permission denied", "chmod 0640", "LoadCredential=hydra-hmac-key:", "fsGroup", "AUDIT_OTLP_CHAIN_KEY"):
        assert fix in found.problem


def test_our_own_key_file_must_be_readable_and_not_empty(tmp_path: Path) -> None:
    with pytest.raises(ChainKeyError, match="chain.key_file: cannot read"):
        find_chain_key({}, tmp_path / "missing.key", tmp_path / "audit.jsonl")
    (tmp_path / "empty.key").write_text("\n")
    with pytest.raises(ChainKeyError, match="empty"):
        find_chain_key({}, tmp_path / "empty.key", tmp_path / "audit.jsonl")
