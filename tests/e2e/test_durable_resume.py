"""Never lose a row that was on disk: the installed daemon, real files, real SIGKILLs, a real
collector that is up, slow (300 ms per request) or down, across every rotation style.

The table covers rotation style (tail-rewrite, rename-create, copytruncate, and tail-rewrite
then rename while stopped) x moment (while running, while stopped, between kill and restart) x
collector (up, slow, down) x daemon lag (caught up, more than 1000 rows behind): every pair of
values appears in some case. Each case asserts (tests/helpers/scenario.py: Scenario.finish): no row lost that was
on disk while the daemon could see it; duplicates only across a kill and within the bound; no
false chain break; a gap reported exactly when rows vanished unseen (log, metric, status, span).
Set DURABLE_REPORT=path to collect each case's figures as JSON lines.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.collector import Collector
from tests.helpers.daemon import load_checkpoint, run_cli
from tests.helpers.paced import random_crash_run
from tests.helpers.paths import TEST_DATA
from tests.helpers.scenario import Outcome, Scenario

PRELUDE = 300  # delivered before anything happens
SEEN_BEHIND = 1500  # written while the collector is slow or down, before a stop
BURST = 3000  # puts the daemon (or the stopped daemon's checkpoint) more than 1000 rows behind
AFTER = 500  # written after the rotation


@dataclass(frozen=True)
class Case:
    style: str  # tail_rewrite | rename | copytruncate | tail_rewrite+rename
    moment: str  # running | stopped | killed (rotated between the SIGKILL and the restart)
    collector: str  # up | slow | down
    lag: str  # caught_up | behind
    kill_after: bool = False  # running: SIGKILL once the daemon noticed the rotation

    @property
    def name(self) -> str:
        return "_".join(
            [self.style.replace("+", "_then_"), self.moment, self.collector, self.lag]
            + (["then_sigkill"] if self.kill_after else [])
        )


TABLE = [
    Case("tail_rewrite", "running", "up", "caught_up"),
    Case("tail_rewrite", "running", "slow", "behind", kill_after=True),
    Case("tail_rewrite", "running", "down", "behind", kill_after=True),
    Case("tail_rewrite", "stopped", "down", "caught_up"),
    Case("tail_rewrite", "stopped", "up", "behind"),
    Case("tail_rewrite", "killed", "slow", "caught_up"),
    Case("tail_rewrite", "killed", "down", "behind"),
    Case("rename", "running", "down", "behind", kill_after=True),
    Case("rename", "running", "slow", "caught_up"),
    Case("rename", "stopped", "slow", "behind"),
    Case("rename", "killed", "up", "caught_up"),
    Case("rename", "killed", "down", "behind"),
    Case("copytruncate", "running", "down", "behind", kill_after=True),
    Case("copytruncate", "running", "up", "caught_up", kill_after=True),
    Case("copytruncate", "stopped", "down", "behind"),
    Case("copytruncate", "stopped", "up", "caught_up"),
    Case("copytruncate", "killed", "slow", "behind"),
    Case("tail_rewrite+rename", "stopped", "up", "behind"),
    Case("tail_rewrite+rename", "killed", "slow", "caught_up"),
    Case("tail_rewrite+rename", "killed", "down", "behind"),
]


def play(case: Case, s: Scenario) -> Outcome:
    s.producer.append(PRELUDE)
    s.start()
    assert s.wait_delivered(), "the prelude was not delivered"
    s.mood.mode = case.collector
    if case.moment == "running":
        if case.lag == "behind":
            s.producer.append(BURST)
        before = s.metric("audit_otlp_rotations_total")
        s.lag_at_rotation = s.lag()
        s.producer.rotate(case.style)
        s.producer.append(AFTER)
        if case.kill_after:
            assert s.wait_rotation_noticed(before), "the daemon did not notice the rotation"
            s.kill()
            s.start()
    else:
        if case.lag == "behind" and case.collector != "up":
            s.producer.append(SEEN_BEHIND)  # seen by the daemon, not (all) delivered
        s.kill() if case.moment == "killed" else s.stop()
        if case.lag == "behind":
            s.producer.append(BURST)  # written while it is stopped
        s.lag_at_rotation = s.lag()
        s.producer.rotate(case.style)
        s.producer.append(AFTER)
        s.start()
    if case.lag == "behind":
        assert s.lag_at_rotation > 1000, f"the case needs a daemon > 1000 rows behind, was {s.lag_at_rotation}"
    else:
        assert s.lag_at_rotation == 0, f"the case needs a caught-up daemon, was {s.lag_at_rotation} behind"
    if case.collector == "down":
        assert s.wait_read(), "the restarted daemon read nothing"
    return s.finish()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", TABLE, ids=lambda c: c.name)
def test_durable_resume_table(audit_cli: str, tmp_path: Path, case: Case) -> None:
    with Scenario(audit_cli, tmp_path, case.name) as s:
        outcome = play(case, s)
    assert not outcome.violations, "\n".join(outcome.violations) + "\n" + outcome.summary()


# -- the two cases measured in the issue, word for word -----------------------------------------


@pytest.mark.timeout(240)
def test_restart_after_tail_rewrite_and_rename_while_stopped_reads_the_renamed_file(audit_cli: str, tmp_path: Path) -> None:
    """`run --once` ships rows 1-2000. While it is stopped the producer writes 2001-4000,
    tail-rewrites (keeps the last 1000 lines, so 2001-3000 exist nowhere any more), writes
    4001-5000, logrotate renames the file to `audit.jsonl.1`, and a new `audit.jsonl` gets
    5001-6000. The next `run --once` must ship 3001-6000 and report 2001-3000 as one gap
    (on main it shipped only 5001-6000)."""
    with Scenario(audit_cli, tmp_path, "measured_restart_after_rotations_while_stopped") as s:
        s.producer.append(2000)
        s.run_once()
        s.producer.append(2000)
        s.producer.rotate("tail_rewrite")
        s.producer.append(1000)
        s.producer.rotate("rename")
        s.producer.append(1000)
        s.run_once()
        outcome = s.finish()
    assert s.gone == set(range(2001, 3001))
    assert not outcome.violations, "\n".join(outcome.violations) + "\n" + outcome.summary()


@pytest.mark.timeout(240)
def test_rows_only_in_the_held_inode_survive_a_sigkill(audit_cli: str, tmp_path: Path) -> None:
    """The collector is down; 5,000 rows arrive; the producer tail-rewrites (rows 1-4000 now live
    only in the inode the daemon still has open) and appends 500; the daemon is SIGKILLed and
    restarted with the collector up: all 5,500 rows must arrive (on main 4,000 never did)."""
    with Scenario(audit_cli, tmp_path, "measured_sigkill_after_tail_rewrite_collector_down") as s:
        s.mood.mode = "down"
        s.producer.path.touch()
        s.start()
        s.producer.append(5000)
        assert s.wait_read()
        before = s.metric("audit_otlp_rotations_total")
        s.producer.rotate("tail_rewrite")
        s.producer.append(500)
        assert s.wait_rotation_noticed(before)
        # The promise: a rotation is reported only once what it made vanish is spooled (the window
        # left, rewrite -> the daemon's next look, is a named limitation, docs/design.md). So the
        # spool is there the moment the rotation is, and the kill comes right then.
        assert s.metric("audit_otlp_spooled_bytes_total") > 0, "the rotation was reported before its rows were spooled"
        s.kill()
        s.mood.mode = "up"
        s.start()
        outcome = s.finish()
    assert outcome.written == 5500 and not s.gone
    assert not outcome.violations, "\n".join(outcome.violations) + "\n" + outcome.summary()


# -- random SIGKILLs shortly after tail-rewrites, a lagging daemon and a slow collector ----------


@pytest.mark.timeout(400)
def test_random_sigkills_after_tail_rewrites_lose_nothing(audit_cli: str, tmp_path: Path) -> None:
    """Scaled as measured in the issue: 20,000 rows, 9 rotations, two SIGKILLs (3 of 7 such
    runs lost 1,000-2,000 rows on main)."""
    outcome = random_crash_run(
        audit_cli,
        tmp_path,
        "random_two_sigkills_after_tail_rewrites",
        rows=20_000,
        every=(1700, 2300),
        kills=2,
        seed=12,
    )
    assert outcome.kills == 2
    assert not outcome.violations, "\n".join(outcome.violations) + "\n" + outcome.summary()


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_sigkills_after_tail_rewrites_long(audit_cli: str, tmp_path: Path, seed: int) -> None:
    """Long mode: at least 20 SIGKILLs shortly after tail-rewrites, lagging daemon, slow collector."""
    outcome = random_crash_run(
        audit_cli,
        tmp_path,
        f"random_twenty_sigkills_seed{seed}",
        rows=90_000,
        every=(600, 1000),
        kills=20,
        seed=seed,
    )
    assert outcome.kills >= 20
    assert not outcome.violations, "\n".join(outcome.violations) + "\n" + outcome.summary()


# -- a checkpoint written by the format-1 daemon -------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case, expected", [("mid_file", range(31, 51)), ("renamed", range(31, 41))])
def test_a_real_version_1_checkpoint_resumes_where_it_stood(audit_cli: str, tmp_path: Path, case: str, expected: range) -> None:
    """Files written by the format-1 daemon (tests/data/checkpoint_v1): the checkpoint is
    migrated, not moved aside; delivery resumes after row 30, exactly once, and the checkpoint
    is format 2 afterwards. (Its device and inode are another machine's: found by content.)"""
    shutil.copytree(TEST_DATA / "checkpoint_v1" / case, tmp_path / "work")
    work = tmp_path / "work"
    (work / "state").mkdir()
    os.replace(work / "checkpoint.json", work / "state" / "checkpoint.json")
    with Collector() as collector:
        done = run_cli(
            audit_cli,
            [
                "run",
                "--once",
                "--file",
                str(work / "audit.jsonl"),
                "--checkpoint",
                str(work / "state" / "checkpoint.json"),
                "--endpoint",
                collector.endpoint,
            ],
        )
        assert done.returncode == 0, done.stderr
        seqs = collector.accepted_seqs()
    assert seqs == list(expected), (seqs, done.stderr[-2000:])
    assert "CHECKPOINT CORRUPT" not in done.stderr and "RESUME GAP" not in done.stderr
    assert not list((work / "state").glob("*corrupt*"))
    assert load_checkpoint(work / "state" / "checkpoint.json") is not None  # format 2 now
