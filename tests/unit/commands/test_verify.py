"""`audit-otlp verify FILE...`: exit codes, the reported line, --json, several files as one
chain (tail-rewrite overlap included), HMAC keys, and each kind of tampering at the right row."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_otlp.commands.verify import verify_files
from audit_otlp.mapping.chain import GENESIS, ChainHasher
from tests.helpers.auditgen import AuditWriter
from tests.helpers.tampering import TAMPERINGS, edited


def run_verify(cli: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_OTLP_", "OTEL_"))}
    full_env.update(env or {})
    return subprocess.run([cli, "verify", *args], capture_output=True, text=True, timeout=60, env=full_env)


def chained_lines(tmp_path: Path, n: int, hasher: ChainHasher | None = None) -> list[bytes]:
    writer = AuditWriter(tmp_path / "unused.jsonl", **({"hasher": hasher} if hasher else {}))
    return writer.lines(n).splitlines()


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_intact_file_exits_0(tmp_path: Path, audit_cli: str) -> None:
    path = write(tmp_path / "audit.jsonl", chained_lines(tmp_path, 50))
    result = run_verify(audit_cli, str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "intact: 50 chained rows" in result.stdout


@pytest.mark.parametrize("kind", sorted(TAMPERINGS))
def test_tampering_is_reported_at_the_right_line(tmp_path: Path, audit_cli: str, kind: str) -> None:
    lines = chained_lines(tmp_path, 30)
    hashes = [ChainHasher().row_hash(orjson.loads(line)) for line in lines]
    expected_line = TAMPERINGS[kind](lines)
    path = write(tmp_path / "audit.jsonl", lines)

    result = run_verify(audit_cli, str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"line {expected_line}:" in result.stdout
    report = orjson.loads(run_verify(audit_cli, "--json", str(path)).stdout)
    first = report["first_break"]
    assert report["intact"] is False and first["line"] == expected_line and first["file"] == str(path)
    assert first["found"] == orjson.loads(lines[expected_line - 1])["prev_hash"]
    # expected = the hash of the row now before the reported one, in base64 as in the file
    assert first["expected"] == ChainHasher().row_hash(orjson.loads(lines[expected_line - 2]))
    assert first["expected"] in result.stdout and first["found"] in result.stdout
    assert report["break_count"] <= 2  # no cascade: the verifier re-anchors after a break
    if kind in ("edit", "delete", "insert"):
        assert report["break_count"] == 1
    if kind == "genesis":  # reported as a restart; rewriting its prev_hash also changed the row's hash
        assert first["kind"] == "restart" and "GENESIS" in result.stdout
    assert hashes  # (the untampered hashes, for debugging a failure)


def test_insert_with_a_bogus_prev_hash_is_one_break_at_the_inserted_row(tmp_path: Path) -> None:
    lines = chained_lines(tmp_path, 30)
    lines.insert(9, edited(lines[9], prev_hash="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
    report = verify_files([write(tmp_path / "a.jsonl", lines)], ChainHasher())
    assert [b.line for b in report.breaks] == [10] and report.break_count == 1


def test_unreadable_file_exits_2(tmp_path: Path, audit_cli: str) -> None:
    result = run_verify(audit_cli, str(tmp_path / "missing.jsonl"))
    assert result.returncode == 2 and "cannot read" in result.stderr
    assert run_verify(audit_cli, str(tmp_path)).returncode == 2  # a directory
    result = run_verify(audit_cli, "--json", str(tmp_path / "missing.jsonl"))
    assert result.returncode == 2 and orjson.loads(result.stdout)["intact"] is None


def test_json_report_of_an_intact_file(tmp_path: Path, audit_cli: str) -> None:
    lines = chained_lines(tmp_path, 20)
    path = write(tmp_path / "audit.jsonl", lines[:10] + [b"", b'{"event":"note"}'] + lines[10:])
    result = run_verify(audit_cli, "--json", str(path))
    report = orjson.loads(result.stdout)
    assert result.returncode == 0
    assert report["intact"] is True and report["rows"] == 20 and report["unchained_rows"] == 1
    assert report["breaks"] == [] and report["first_break"] is None and report["anchored"] is False
    assert report["last_hash"] == ChainHasher().row_hash(orjson.loads(lines[-1]))


def test_malformed_line_is_reported(tmp_path: Path) -> None:
    lines = chained_lines(tmp_path, 10)
    lines[4] = b'{"event": "tool_use", "truncated'
    report = verify_files([write(tmp_path / "a.jsonl", lines)], ChainHasher())
    assert not report.intact and report.breaks[0].line == 5 and report.breaks[0].kind == "malformed"


def test_last_line_without_newline_is_checked(tmp_path: Path) -> None:
    lines = chained_lines(tmp_path, 5)
    lines[4] = edited(lines[4], prev_hash="bogus")
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\n".join(lines))
    report = verify_files([path], ChainHasher())
    assert [b.line for b in report.breaks] == [5]


def test_files_in_rotation_order_continue_one_chain(tmp_path: Path, audit_cli: str) -> None:
    lines = chained_lines(tmp_path, 90)
    old, mid, new = (
        write(tmp_path / name, part)
        for name, part in (("audit.jsonl.2", lines[:30]), ("audit.jsonl.1", lines[30:60]), ("audit.jsonl", lines[60:]))
    )
    result = run_verify(audit_cli, str(old), str(mid), str(new))
    assert result.returncode == 0, result.stdout
    # out of order, the seam breaks
    result = run_verify(audit_cli, "--json", str(mid), str(old), str(new))
    report = orjson.loads(result.stdout)
    assert result.returncode == 1 and report["first_break"]["file"] == str(old) and report["first_break"]["line"] == 1
    # the newest file alone starts mid-chain: intact, with its first link unchecked
    alone = run_verify(audit_cli, "--json", str(new))
    assert alone.returncode == 0 and orjson.loads(alone.stdout)["anchored"] is True


def test_tail_rewrite_overlap_is_recognised(tmp_path: Path) -> None:
    """The producer's rotation: the new file begins with the old file's last rows."""
    lines = chained_lines(tmp_path, 300)
    old = write(tmp_path / "audit.jsonl.1", lines[:200])
    new = write(tmp_path / "audit.jsonl", lines[150:])  # rows 151..200 repeated
    report = verify_files([old, new], ChainHasher())
    assert report.intact, report.to_json()
    assert report.overlap_rows == 50 and report.rows == 300


def test_tail_rewrite_overlap_that_differs_is_a_break(tmp_path: Path) -> None:
    lines = chained_lines(tmp_path, 300)
    old = write(tmp_path / "audit.jsonl.1", lines[:200])
    rewritten = lines[150:]
    rewritten[20] = edited(rewritten[20], target="rewritten")  # line 21 of the new file
    new = write(tmp_path / "audit.jsonl", rewritten)
    report = verify_files([old, new], ChainHasher())
    assert not report.intact
    assert (report.breaks[0].file, report.breaks[0].line, report.breaks[0].kind) == (str(new), 21, "overlap_mismatch")


def test_hmac_key_from_the_environment(tmp_path: Path, audit_cli: str) -> None:
    path = write(tmp_path / "audit.jsonl", chained_lines(tmp_path, 20, ChainHasher("sécret".encode())))
    assert run_verify(audit_cli, str(path), env={"AUDIT_OTLP_CHAIN_KEY": "sécret"}).returncode == 0
    wrong = run_verify(audit_cli, str(path), env={"AUDIT_OTLP_CHAIN_KEY": "other"})
    assert wrong.returncode == 1 and "line 2:" in wrong.stdout
    assert "sécret" not in wrong.stdout + wrong.stderr
    assert run_verify(audit_cli, str(path)).returncode == 1  # plain SHA-256 does not verify it


def test_hmac_key_file(tmp_path: Path, audit_cli: str) -> None:
    path = write(tmp_path / "audit.jsonl", chained_lines(tmp_path, 10, ChainHasher(b"k3y")))
    (tmp_path / "key").write_bytes(b"k3y\n")
    (tmp_path / "c.toml").write_text(f'[chain]\nkey_file = "{tmp_path / "key"}"\n')
    assert run_verify(audit_cli, "--config", str(tmp_path / "c.toml"), str(path)).returncode == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["edit", "delete", "insert", "insert_bogus", "swap", "genesis", "blank", "unchained"]),
            st.integers(1, 38),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_verify_and_the_daemon_agree_on_any_tampering(tmp_path: Path, ops: list[tuple[str, int]]) -> None:
    """`verify`'s inline fast path and the daemon's RowMapper report the same lines."""
    from audit_otlp.mapping.chain import ChainState
    from audit_otlp.mapping.ids import MappingOptions
    from audit_otlp.mapping.rows import RowMapper
    from audit_otlp.source.lines import Line

    lines = chained_lines(tmp_path, 40)
    for op, i in ops:
        i = min(i, len(lines) - 1)
        if op in ("edit", "insert", "insert_bogus", "genesis") and b"prev_hash" not in lines[i]:
            continue  # a blank or unchained line inserted before
        if op == "edit":
            lines[i] = edited(lines[i], target="x")
        elif op == "delete":
            del lines[i]
        elif op == "insert":
            lines.insert(i, edited(lines[i], seq=-1))
        elif op == "insert_bogus":
            lines.insert(i, edited(lines[i], prev_hash="bogus"))
        elif op == "swap":
            lines[i - 1], lines[i] = lines[i], lines[i - 1]
        elif op == "genesis":
            lines[i] = edited(lines[i], prev_hash=GENESIS)
        elif op == "blank":
            lines.insert(i, b"")
        else:
            lines.insert(i, b'{"event":"note"}')
    path = write(tmp_path / "fuzz.jsonl", lines)
    report = verify_files([path], ChainHasher())

    class Events:
        def __init__(self) -> None:
            self.lines: list[int] = []

        def malformed_line(self, reason: str) -> None: ...

        def chain_break(self, verdict: Any, offset: int, line_number: int) -> None:
            self.lines.append(line_number)

    events = Events()
    mapper = RowMapper(MappingOptions(), ChainHasher(), ChainState(), events)
    offset = 0
    for line in lines:
        mapper.map_line(Line(offset, offset + len(line) + 1, line, None), 1)
        offset += len(line) + 1
    assert [b.line for b in report.breaks] == events.lines
    assert report.break_count == len(events.lines)
