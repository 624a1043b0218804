"""Where the hash chain's HMAC key comes from (interface.md, "Audit-specific"): our own settings
first (AUDIT_OTLP_CHAIN_KEY, then chain.key_file), then the producer's, as the hydra plugin
finds it: HYDRA_AUDIT_HMAC_KEY, then hmac-key.bin in the audit log's directory, whose text
without its trailing newlines is the key (the plugin writes 64 hex characters and a newline,
mode 0600). With none of them, the chain is plain SHA-256. Only the source is ever shown.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PRODUCER_KEY_FILE = "hmac-key.bin"


@dataclass(frozen=True)
class ChainKey:
    key: bytes | None = field(default=None, repr=False)
    source: str = "none"  # e.g. "env:HYDRA_AUDIT_HMAC_KEY", "file:/…/hmac-key.bin (the producer's key file)"
    problem: str | None = None  # why a key that exists could not be used (said at start-up)


class ChainKeyError(ValueError):
    """Our own key setting is unusable (the message names the setting and the fix)."""


def unreadable_advice(path: Path, reason: str) -> str:
    return (
        f"the producer's chain key {path} exists but cannot be read ({reason}), so the chain cannot be "
        "verified. Fix one of: let this user read it (add the user to the file's group and make it "
        "group-readable, chmod 0640; the hydra plugin creates it 0600); under systemd, "
        f"LoadCredential=hydra-hmac-key:{path} in the unit and chain.key_file = "
        '"/run/credentials/audit-otlp.service/hydra-hmac-key"; in a pod, mount the plugin\'s state '
        "volume with a securityContext.fsGroup the daemon belongs to (or give the key as "
        "AUDIT_OTLP_CHAIN_KEY from a Secret)"
    )


def producer_key(path: Path) -> ChainKey:
    """The hydra plugin's key file: absent or empty (the plugin would create it) is no key."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return ChainKey()
    except IsADirectoryError:
        return ChainKey(problem=f"{path} is a directory, not the producer's chain key")
    except OSError as exc:
        reason = "permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else (exc.strerror or str(exc))
        return ChainKey(source=f"file:{path} (the producer's key file, unreadable)", problem=unreadable_advice(path, reason))
    key = text.rstrip(b"\n")  # what `$(cat file)` gives the plugin
    if not key:
        return ChainKey()
    return ChainKey(key, f"file:{path} (the producer's key file)")


def find_chain_key(env: Mapping[str, str], key_file: Path | None, audit_path: Path) -> ChainKey:
    if env.get("AUDIT_OTLP_CHAIN_KEY"):
        return ChainKey(env["AUDIT_OTLP_CHAIN_KEY"].encode("utf-8"), "env:AUDIT_OTLP_CHAIN_KEY")
    if key_file is not None:
        try:
            key = key_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ChainKeyError(f"chain.key_file: cannot read {key_file}: {exc.strerror}") from None
        if not key:
            raise ChainKeyError("chain.key_file: the key file is empty; accepted: a file holding the HMAC key")
        return ChainKey(key, f"file:{key_file} (chain.key_file)")
    if env.get("HYDRA_AUDIT_HMAC_KEY"):  # the plugin treats an empty value as unset
        return ChainKey(env["HYDRA_AUDIT_HMAC_KEY"].encode("utf-8"), "env:HYDRA_AUDIT_HMAC_KEY")
    return producer_key(Path(os.path.abspath(audit_path)).parent / PRODUCER_KEY_FILE)
