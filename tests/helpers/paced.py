"""The issue's random crash run (tests/e2e/test_durable_resume.py): a producer writing at a
steady rate and rotating its file in turn, SIGKILLs shortly after tail-rewrites, a lagging
daemon and a slow collector, judged by tests/helpers/scenario.py."""

from __future__ import annotations

import random
import threading
from pathlib import Path

from tests.helpers.scenario import Outcome, Scenario
from tests.torture.harness import fault_pause

STYLES = ("tail_rewrite", "rename", "copytruncate")


class PacedProducer(threading.Thread):
    """Writes `rows` at `rate` rows/s and rotates every `every` rows (styles in turn), only while
    the daemon is up (a rotation between kill and restart is the table's business); after each
    tail-rewrite it tells the test, which may then SIGKILL the daemon."""

    def __init__(self, s: Scenario, rows: int, rate: int, every: tuple[int, int], seed: int) -> None:
        super().__init__(daemon=True)
        self.s, self.rows, self.rate, self.every = s, rows, rate, every
        self.rng = random.Random(seed)
        self.daemon_up = threading.Event()
        self.rewrites: list[float] = []  # the rotations metric just before each tail-rewrite
        self.rewritten = threading.Condition()
        self.rotations = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            burst, until = 20, self.rng.randint(*self.every)
            pause = threading.Event()
            while self.s.producer.written < self.rows:
                self.s.producer.append(min(burst, self.rows - self.s.producer.written))
                until -= burst
                if until <= 0 and self.daemon_up.is_set():
                    with self.s.producer.lock:
                        if self.daemon_up.is_set():
                            self._rotate()
                    until = self.rng.randint(*self.every)
                pause.wait(burst / self.rate)  # the producer's pace, not a synchronisation
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            with self.rewritten:
                self.rewritten.notify_all()

    def _rotate(self) -> None:
        style = STYLES[self.rotations % len(STYLES)]
        self.rotations += 1
        before = self.s.metric("audit_otlp_rotations_total") if style == "tail_rewrite" else 0.0
        self.s.producer.rotate(style)
        if style == "tail_rewrite":
            with self.rewritten:
                self.rewrites.append(before)
                self.rewritten.notify_all()


def random_crash_run(
    cli: str,
    tmp: Path,
    name: str,
    rows: int,
    every: tuple[int, int],
    kills: int,
    seed: int,
) -> Outcome:
    """The issue's random crash run: `rows` at 2,000 rows/s, rotations cycling tail-rewrite /
    rename-create / copytruncate, SIGKILLs shortly after tail-rewrites, a collector that takes
    200-400 ms per 512-span request and one request in flight (about 1,700 rows/s: the daemon
    falls behind), the default poll interval (1 s)."""
    rng = random.Random(seed)
    with Scenario(cli, tmp, name, slow=(0.2, 0.4), seed=seed, poll_interval="1s", max_in_flight=1) as s:
        s.mood.mode = "slow"
        s.producer.append(20)
        s.start()
        producer = PacedProducer(s, rows, 2000, every, seed)
        producer.daemon_up.set()
        producer.start()
        handled = 0
        while len(s.kills) < kills and producer.is_alive():
            with producer.rewritten:
                producer.rewritten.wait_for(
                    lambda seen=handled: len(producer.rewrites) > seen or not producer.is_alive(),
                    60,
                )
            if len(producer.rewrites) <= handled:
                continue
            before = producer.rewrites[-1]
            handled = len(producer.rewrites)
            assert s.wait_rotation_noticed(before), "the daemon did not notice the tail-rewrite"
            fault_pause(rng.uniform(0.0, 0.5))  # "shortly after": the timing is the fault
            with s.producer.lock:
                producer.daemon_up.clear()
                s.kill()
            fault_pause(rng.uniform(0.0, 0.5))  # the producer keeps writing while it is down
            s.start()
            producer.daemon_up.set()
        producer.join(120)
        assert producer.error is None, producer.error
        outcome = s.finish(timeout=180)
    print(f"{name}: {producer.rotations} rotations, lag at kills {outcome.lag_at_kills}")
    return outcome
