"""The hydra producer's behaviour, one hook call at a time: the key, the hash of the previous
line, log_metric's mkdir lock and tail rotation, egress-shield's flock append, and the hooks
that write rows. `hydra_sim` runs these in parallel processes; its docstring says what is
reproduced and what is not. Standard library only.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .hydra_jq import canonical_line, jq_compact

MAX_AUDIT_BYTES = 10485760  # shared/constants.sh
KEEP_LINES = 1000  # tail -n 1000 in shared/metrics.sh
GENESIS = "GENESIS"
WRITTEN, ROTATED, DROPPED = 0, 3, 1  # outcome of one append (also a twin child's exit code)
PLUGINS = ("audit-trail", "egress-shield", "secret-scanner", "action-guard")


@dataclass(frozen=True)
class HydraTree:
    root: Path

    def state(self, plugin: str) -> Path:
        return self.root / "plugins" / plugin / "state"

    @property
    def audit(self) -> Path:
        return self.state("audit-trail") / "audit.jsonl"

    @property
    def key_file(self) -> Path:
        return self.state("audit-trail") / "hmac-key.bin"

    @property
    def journal(self) -> Path:
        return self.root / "sim" / "journal.ndjson"

    def journal_lines(self) -> list[bytes]:
        return self.journal.read_bytes().splitlines() if self.journal.exists() else []


@dataclass(frozen=True)
class Settings:
    max_bytes: int = MAX_AUDIT_BYTES
    keep_lines: int = KEEP_LINES
    # Mean seconds between reading the parent and taking the lock, and between one writer's
    # calls: with 4 writers, about 80% of rows then do not point at the line above them, as the
    # issue measured for the real hooks (82% of 2,001 rows).
    window: float = 0.008
    pause: float = 0.001
    lock_tries: int = 50
    lock_sleep: float = 0.1


# -- the key and the hash (scripts/chain-helpers.sh) -----------------------------------------


def producer_key(tree: HydraTree) -> bytes | None:
    env_key = os.environ.get("HYDRA_AUDIT_HMAC_KEY", "")
    if env_key:
        return env_key.encode()
    key_file = tree.key_file
    try:
        if os.access(key_file, os.R_OK) and key_file.stat().st_size > 0:
            return key_file.read_bytes().rstrip(b"\n")  # $(cat file) drops trailing newlines
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_hex(32) + "\n")  # openssl rand -hex 32 > file
        os.chmod(key_file, 0o600)
        return key_file.read_bytes().rstrip(b"\n")
    except OSError:
        return None  # the plugin warns (on a stderr nobody reads) and uses plain SHA-256


def link_hash(canonical: bytes, key: bytes | None) -> str:
    if key is None:
        digest = hashlib.sha256(canonical).digest()
    else:
        digest = hmac.new(key, canonical, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def last_nonblank_line(path: Path) -> bytes | None:
    """`awk 'NF{line=$0} END{print line}'`: the last line holding more than spaces and tabs."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        tail = b""
        while True:
            start = max(0, end - 65536)
            f.seek(start)
            tail = f.read(end - start) + tail
            lines = tail.split(b"\n")
            candidates = lines if start == 0 else lines[1:]  # lines[0] may be cut
            for line in reversed(candidates):
                if line.strip(b" \t"):
                    return line
            if start == 0:
                return None
            end = start
            tail = lines[0]


def compute_prev_hash(tree: HydraTree) -> str:
    try:
        if tree.audit.stat().st_size == 0:
            return GENESIS
        last = last_nonblank_line(tree.audit)
    except FileNotFoundError:
        return GENESIS
    if last is None:
        return GENESIS
    return link_hash(canonical_line(last), producer_key(tree))


# -- appending (shared/metrics.sh, egress-shield's append_jsonl_locked) ----------------------


def tail_lines(data: bytes, count: int) -> bytes:
    """What `tail -n count` prints: a last line without its newline counts as a line."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    return b"".join(lines[-count:]) if count > 0 else b""


def append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def log_metric(tree: HydraTree, path: Path, payload: str, settings: Settings) -> int:
    lock_dir = Path(f"{path}.lock")
    for _ in range(settings.lock_tries):
        try:
            lock_dir.mkdir()
            break
        except OSError:  # held by another call; or no state directory, which never appears
            time.sleep(settings.lock_sleep)
    else:
        return DROPPED  # the plugin gives up after ~5 s and the row is never written
    outcome = WRITTEN
    try:
        if path.is_file() and path.stat().st_size > settings.max_bytes:
            tmp = Path(f"{path}.tmp")
            tmp.write_bytes(tail_lines(path.read_bytes(), settings.keep_lines))
            os.rename(tmp, path)
            outcome = ROTATED
        path.parent.mkdir(parents=True, exist_ok=True)
        append(path, payload.encode() + b"\n")
        if path == tree.audit:
            append(tree.journal, payload.encode() + b"\n")
    finally:
        lock_dir.rmdir()
    return outcome


def append_flocked(tree: HydraTree, path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            f.write(line + "\n")
            f.flush()
            if path == tree.audit:  # before the fsync: no reader can hash the row before this
                append(tree.journal, line.encode() + b"\n")
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# -- the hooks ---------------------------------------------------------------------------------


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def safe_target(tool: str, target: str) -> str:
    """log-event.sh: a Bash command is cut to 200 bytes and obvious secrets are masked."""
    if tool != "Bash":
        return target
    text = target.encode()[:200].decode("utf-8", "strict")  # the vocabulary cuts no character
    text = re.sub(r"(password|secret|token|api.key)=[^ ]*", r"\1=[REDACTED]", text, flags=re.IGNORECASE)
    return re.sub(r"(sk-[a-zA-Z0-9]{4})[a-zA-Z0-9]+", r"\1[...]", text).rstrip("\n")


def tool_use(
    tree: HydraTree, event: dict[str, Any], settings: Settings, rng: random.Random, barrier: tuple[int, int] | None = None
) -> int:
    """One PostToolUse call of log-event.sh (plus the sibling hooks the call triggers)."""
    ts = now()
    if "guard" in event:  # action-guard ran before the tool (PreToolUse, advisory)
        row = {"event": "action_blocked", "ts": ts, **event["guard"], "mode": "balanced"}
        log_metric(tree, tree.state("action-guard") / "audit.jsonl", jq_compact(row), settings)
    prev_hash = compute_prev_hash(tree)
    if barrier is not None:  # a twin: both calls have read the parent before either goes on
        os.write(barrier[1], b"x")
        os.read(barrier[0], 1)
    row = {
        "event": "tool_use",
        "ts": ts,
        "tool": event["tool"],
        "target": safe_target(event["tool"], event["target"]),
        "prev_hash": prev_hash,
    }
    time.sleep(rng.uniform(0, 2 * settings.window))  # jq -cn, jq empty, process start-up
    outcome = log_metric(tree, tree.audit, jq_compact(row), settings)
    if "secret" in event:  # secret-scanner, PostToolUse on the same Write
        secret = event["secret"]
        finding = {
            "event": "secret_detected",
            "ts": ts,
            "file": event["target"],
            "line": secret["line"],
            "pattern_id": secret["pattern_id"],
            "severity": secret["severity"],
            "masked": secret["masked"],
            "tool": event["tool"],
            "is_test": False,
        }
        log_metric(tree, tree.state("secret-scanner") / "audit.jsonl", jq_compact(finding), settings)
    return outcome


def twin_calls(tree: HydraTree, event: dict[str, Any], settings: Settings, seed: int) -> list[int]:
    """Two identical tool calls at once, as two processes (Claude Code runs hooks in parallel)."""
    a_to_b, b_to_a = os.pipe(), os.pipe()
    children = []
    for n, (reads, writes) in enumerate(((b_to_a[0], a_to_b[1]), (a_to_b[0], b_to_a[1]))):
        pid = os.fork()
        if pid == 0:
            os._exit(tool_use(tree, event, settings, random.Random(seed + n), (reads, writes)))
        children.append(pid)
    outcomes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    for fd in (*a_to_b, *b_to_a):
        os.close(fd)
    return outcomes


def egress_block(tree: HydraTree, event: dict[str, Any]) -> None:
    """egress-shield blocks the call (so no audit-trail row) and records it in both files."""
    record = {
        "ts": now(),
        "event": "policy_blocked",
        "shield": "egress-shield",
        "tool": event["tool"],
        "host": event["host"],
        "allowlist_size": event["allowlist_size"],
    }
    line = json.dumps(record, separators=(",", ":"))
    own = tree.state("egress-shield") / "audit.ndjson"
    own.parent.mkdir(parents=True, exist_ok=True)
    append_flocked(tree, own, line)
    if tree.audit.parent.is_dir():  # the sibling file only when its state directory exists
        append_flocked(tree, tree.audit, line)


def run_event(tree: HydraTree, event: dict[str, Any], settings: Settings, rng: random.Random) -> list[int]:
    kind = event["kind"]
    if kind == "tool":
        return [tool_use(tree, event, settings, rng)]
    if kind == "twin":
        return twin_calls(tree, event, settings, rng.randrange(2**31))
    if kind == "egress":
        egress_block(tree, event)
    elif kind == "stray":  # a line that is not JSON: an interrupted or hand-made write
        append_flocked(tree, tree.audit, event["text"])
    return [WRITTEN]
