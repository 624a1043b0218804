"""The hydra producer simulator (tests/helpers/hydra_sim.py) writes what the real plugin writes:
lines and hashes identical to `jq -c -S` + `openssl dgst -sha256 -mac hmac`, the plugin's key
rule, forks and byte-identical lines from parallel writers, egress rows and a non-JSON line as
links, the tail rotation, and the silent drop when the lock cannot be had.

The oracle is the documented rule run with the real tools (ORACLE below). A recorded copy of
its results on a fixed corpus, made with Debian's jq 1.6 and OpenSSL 3.0 (per line: base64 of
the canonical form, the HMAC with CORPUS_KEY, the plain SHA-256), is
tests/data/hydra_sim_corpus.expected; it keeps the main check running where jq or openssl is
missing.
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.helpers.hydra_jq import NotLikeJq, canonical_line
from tests.helpers.hydra_plan import CALLS, STRAY_LINE, classify_links
from tests.helpers.hydra_producer import (
    DROPPED,
    GENESIS,
    HydraTree,
    Settings,
    compute_prev_hash,
    last_nonblank_line,
    link_hash,
    log_metric,
    producer_key,
    safe_target,
    tail_lines,
)
from tests.helpers.hydra_sim import simulate

DATA = Path(__file__).resolve().parent.parent / "data"
CORPUS_KEY = "5e1f0c9a7b3d2e8f4a6c1b0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f"
# Per input line: its link hash, base64(HMAC-SHA256(key, canonical)), then base64(SHA-256(...))
# unless $2 is "hmac"; the canonical form is `jq -c -S .` or, when jq fails, the raw line: what
# chain-helpers.sh hashes. (Equal hashes mean equal canonical bytes.)
ORACLE = r"""
key=$1
while IFS= read -r line || [ -n "$line" ]; do
  if canonical=$(printf '%s' "$line" | jq -c -S . 2>/dev/null); then :; else canonical=$line; fi
  printf '%s' "$canonical" | openssl dgst -sha256 -mac hmac -macopt "key:$key" -binary | base64 -w0
  [ "$2" = hmac ] || { printf ' '; printf '%s' "$canonical" | openssl dgst -sha256 -binary | base64 -w0; }
  printf '\n'
done
"""
needs_tools = pytest.mark.skipif(not (shutil.which("jq") and shutil.which("openssl")), reason="needs jq and openssl")
FAST = Settings(window=0.002, pause=0.0005)


def oracle(lines: list[bytes], key: str, mode: str = "both") -> list[tuple[str, ...]]:
    out = subprocess.run(
        ["bash", "-c", ORACLE, "_", key, mode],
        input=b"".join(x + b"\n" for x in lines),
        capture_output=True,
        check=True,
        timeout=300,
    ).stdout
    return [tuple(row.split(" ")) for row in out.decode().splitlines()]


def ours(line: bytes, key: str, mode: str = "both") -> tuple[str, ...]:
    canonical = canonical_line(line)
    keyed = link_hash(canonical, key.encode())
    return (keyed,) if mode == "hmac" else (keyed, link_hash(canonical, None))


def corpus() -> list[bytes]:
    return (DATA / "hydra_sim_corpus.jsonl").read_bytes().splitlines()


def test_corpus_matches_recorded_jq_and_openssl() -> None:
    recorded = (DATA / "hydra_sim_corpus.expected").read_text().splitlines()
    lines = corpus()
    assert len(lines) == len(recorded) > 15
    for line, row in zip(lines, recorded, strict=True):
        canonical, hmac_b64, sha_b64 = row.split(" ")
        assert canonical_line(line) == base64.b64decode(canonical), line
        assert ours(line, CORPUS_KEY) == (hmac_b64, sha_b64), line


@needs_tools
def test_corpus_matches_live_jq_and_openssl() -> None:
    lines = corpus()
    assert [ours(line, CORPUS_KEY) for line in lines] == oracle(lines, CORPUS_KEY)


@needs_tools
@pytest.mark.parametrize(
    "text",
    [
        "1.0",
        "1e3",
        "1e15",
        "1e16",
        "123456789012345678",
        "0.0001",
        "0.00001",
        "1.5e-7",
        "-0",
        "-0.0",
        "1e300",
        "1e400",
        "1e-400",
        "0.1",
        "3.14159",
        "12345678901234567890",
        "5e-324",
        "100.0",
        "1E2",
        "NaN",
        "Infinity",
        '{"z":{"b":[-0.5,2.5e-5]},"a":"\\u00e9\\u007f"}',
        '{"k":1,"k":2}',
    ],
)
def test_number_and_value_forms_match_live_jq(text: str) -> None:
    assert ours(text.encode(), CORPUS_KEY) == oracle([text.encode()], CORPUS_KEY)[0]


@needs_tools
@pytest.mark.parametrize("text", ['{"a":01}', '{"a":.5}', '\ufeff{"a":1}', "1 2", '{"a":1}{"b":2}', '{"s":"\\udc00"}'])
def test_lines_jq_reads_its_own_way_are_refused_not_guessed(text: str) -> None:
    line = text.encode()
    with pytest.raises(NotLikeJq):
        canonical_line(line)
    raw = (link_hash(line, CORPUS_KEY.encode()), link_hash(line, None))
    assert oracle([line], CORPUS_KEY)[0] != raw  # jq does read them: raw bytes would be wrong


@pytest.mark.parametrize(
    "name, content",
    [
        ("plain", b"a\nb\n"),
        ("no final newline", b"a\nb"),
        ("blank and space-only lines after", b"a\nb\n\n  \n\t\n"),
        ("carriage return counts as text", b"a\n\r\n"),
        ("only blank lines", b"\n \n"),
        ("long line across the read chunk", b"x" * 70000 + b"\n" + b"y" * 140000 + b"\n\n"),
        ("short last line after a long one", b"x" * 70000 + b"\nz\n"),
    ],
)
def test_last_nonblank_line_matches_awk(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    awk = subprocess.run(["awk", "NF{line=$0} END{print line}", str(path)], capture_output=True, check=True).stdout
    want = awk[:-1] or None  # awk prints an empty line when no line qualifies
    assert last_nonblank_line(path) == want


@pytest.mark.parametrize("content", [b"", b"a\n", b"a\nb\nc\nd\n", b"a\nb\nc\nd", b"\n\n\nx\n", b"a\nb\nc\n\n"])
@pytest.mark.parametrize("count", [1, 3])
def test_rotation_keeps_what_tail_keeps(tmp_path: Path, content: bytes, count: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    want = subprocess.run(["tail", "-n", str(count), str(path)], capture_output=True, check=True).stdout
    assert tail_lines(content, count) == want


@pytest.mark.parametrize("target", [c["target"] for c in CALLS if c["tool"] == "Bash"])
def test_bash_targets_are_cut_and_masked_like_head_and_sed(target: str) -> None:
    script = (
        "printf '%s' \"$1\" | head -c 200 | sed -E -e 's/(password|secret|token|api.key)=[^ ]*/\\1=[REDACTED]/gi'"
        " -e 's/(sk-[a-zA-Z0-9]{4})[a-zA-Z0-9]+/\\1[...]/g'"
    )
    want = subprocess.run(["bash", "-c", script, "_", target], capture_output=True, check=True, text=True).stdout
    assert safe_target("Bash", target) == want.rstrip("\n")


def test_key_file_created_on_first_use_and_its_text_is_the_key(tmp_path: Path) -> None:
    tree = HydraTree(tmp_path)
    report = simulate(tmp_path, rows=20, writers=1, settings=FAST)
    text = tree.key_file.read_bytes()
    assert len(text) == 65 and text.endswith(b"\n") and bytes.fromhex(text[:64].decode())
    assert stat.S_IMODE(tree.key_file.stat().st_mode) == 0o600 and report.key_source == "file"
    lines = tree.audit.read_bytes().splitlines()
    second = orjson.loads(lines[1])["prev_hash"]
    assert second == link_hash(canonical_line(lines[0]), text[:64])  # the hex text...
    assert second != link_hash(canonical_line(lines[0]), bytes.fromhex(text[:64].decode()))  # ...not its bytes


def test_environment_key_wins_and_no_key_file_is_made(tmp_path: Path) -> None:
    tree = HydraTree(tmp_path)
    report = simulate(tmp_path, rows=20, writers=1, settings=FAST, key="operator-rotated key")
    assert not tree.key_file.exists() and report.key_source == "env"
    assert Counter(classify_links(tree.audit.read_bytes().splitlines(), b"operator-rotated key"))["above"] >= 15


def test_no_key_possible_falls_back_to_plain_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYDRA_AUDIT_HMAC_KEY", raising=False)
    tree = HydraTree(tmp_path / "hydra")
    (tmp_path / "hydra" / "plugins").mkdir(parents=True)
    (tmp_path / "hydra" / "plugins" / "audit-trail").write_text("not a directory")  # even root cannot mkdir here
    assert producer_key(tree) is None
    monkeypatch.setenv("HYDRA_AUDIT_HMAC_KEY", "")  # empty counts as unset, as in the plugin
    assert producer_key(tree) is None


def test_missing_or_empty_file_starts_with_genesis(tmp_path: Path) -> None:
    tree = HydraTree(tmp_path)
    assert compute_prev_hash(tree) == GENESIS
    tree.audit.parent.mkdir(parents=True)
    tree.audit.write_bytes(b"")
    assert compute_prev_hash(tree) == GENESIS
    tree.audit.write_bytes(b"\n  \n")
    assert compute_prev_hash(tree) == GENESIS


def test_one_writer_links_every_line_including_egress_rows_and_the_non_json_line(tmp_path: Path) -> None:
    tree = HydraTree(tmp_path)
    simulate(tmp_path, rows=80, writers=1, settings=FAST, egress_rate=0.2, twin_rate=0.0)
    lines = tree.audit.read_bytes().splitlines()
    key = tree.key_file.read_bytes().rstrip(b"\n")
    links = classify_links(lines, key)
    assert links[0] == "genesis" and "not_json" in links and links.count("unchained") >= 5
    assert lines.index(STRAY_LINE.encode()) < len(lines) - 1
    # Every row after the first points at the line right above it, whatever that line is.
    assert all(kind in ("above", "unchained", "not_json") for kind in links[1:]), Counter(links)
    after_stray = orjson.loads(lines[lines.index(STRAY_LINE.encode()) + 1])["prev_hash"]
    assert after_stray == link_hash(STRAY_LINE.encode(), key)  # raw bytes of the non-JSON line


@needs_tools
def test_parallel_writers_fork_and_every_hash_is_jq_and_openssl(tmp_path: Path) -> None:
    tree = HydraTree(tmp_path)
    report = simulate(tmp_path, rows=120, writers=4)
    lines = tree.audit.read_bytes().splitlines()
    key = tree.key_file.read_bytes().rstrip(b"\n")
    assert report.dropped == 0 and len(lines) == report.rows == 120
    assert Counter(tree.journal_lines()) == Counter(lines)
    expected = oracle(lines, key.decode(), "hmac")
    assert [ours(line, key.decode(), "hmac") for line in lines] == expected
    earlier: set[str] = set()
    for line, (own_hash,) in zip(lines, expected, strict=True):
        row = orjson.loads(line) if line.startswith(b"{") and line.endswith(b"}") else {}
        found = row.get("prev_hash")
        assert found is None or found == GENESIS or found in earlier, line  # always an earlier line
        earlier.add(own_hash)
    links = Counter(classify_links(lines, key))
    assert links["earlier"] > links["above"]  # the real pattern: most rows fork (82% measured)
    assert links["genesis"] == 1 and links["not_json"] == 1 and links["unchained"] == report.egress > 0
    tool_rows = Counter(line for line in lines if b'"tool_use"' in line)
    assert max(tool_rows.values()) >= 2  # byte-identical lines from identical parallel calls


def test_rotation_at_a_small_size_keeps_the_last_lines_and_the_chain(tmp_path: Path) -> None:
    tree = HydraTree(tmp_path)
    report = simulate(
        tmp_path,
        rows=300,
        writers=2,
        settings=Settings(max_bytes=3000, keep_lines=8, window=0.002, pause=0.0005),
        egress_rate=0.0,
    )
    journal, lines = tree.journal_lines(), tree.audit.read_bytes().splitlines()
    assert report.rotations >= 10 and len(journal) == 300 and report.lines_in_file == len(lines)
    assert lines == journal[-len(lines) :]  # the file is the newest tail of everything written
    assert len(tree.audit.read_bytes()) <= 3000 + 400  # rotated before an append, never after
    key = tree.key_file.read_bytes().rstrip(b"\n")
    assert Counter(classify_links(journal, key))["unknown"] == 0  # every parent was written before
    assert classify_links(lines, key)[0] == "unknown"  # the file begins mid-chain


def test_a_held_lock_drops_the_row_as_the_plugin_does(tmp_path: Path) -> None:
    tree = HydraTree(tmp_path)
    tree.audit.parent.mkdir(parents=True)
    Path(f"{tree.audit}.lock").mkdir()
    outcome = log_metric(tree, tree.audit, '{"event":"tool_use"}', Settings(lock_tries=3, lock_sleep=0.01))
    assert outcome == DROPPED and not tree.audit.exists()


@pytest.mark.slow
def test_long_run_many_writers_with_rotation(tmp_path: Path) -> None:
    tree = HydraTree(tmp_path)
    report = simulate(tmp_path, rows=6000, writers=8, settings=Settings(max_bytes=262144), seed=7)
    journal = tree.journal_lines()
    key = tree.key_file.read_bytes().rstrip(b"\n")
    assert report.rotations >= 1 and len(journal) == report.rows == 6000 - report.dropped
    links = Counter(classify_links(journal, key))
    assert links["unknown"] == 0 and links["earlier"] > links["above"]
    assert os.path.getsize(tree.audit) < 262144 + 1000 * 300
