"""How many rows a SIGKILL makes the daemon send again: a writer appends a steady stream, the
installed daemon is SIGKILLed at random moments and restarted, and every acknowledged row is
counted. Not part of the default test run (it measures; tests/e2e/test_durable_resume.py asserts
the bound). Prints one JSON line: rows repeated per kill, and the bound (two in-flight windows).

    python -m tests.benchmarks.bench_kill_repeats                    # 10 kills, 2000 rows/s, collector up
    python -m tests.benchmarks.bench_kill_repeats --kills 20 --rate 4000 --slow 0.05
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
from pathlib import Path

from tests.helpers.scenario import Scenario
from tests.torture.harness import fault_pause


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--rate", type=int, default=2000, help="rows per second written")
    parser.add_argument("--slow", type=float, default=0.0, help="collector delay per request (s); 0: up")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cli", default="audit-otlp")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with (
        tempfile.TemporaryDirectory() as tmp,
        Scenario(args.cli, Path(tmp), "kill_repeats", slow=args.slow) as s,
    ):
        s.mood.mode = "slow" if args.slow else "up"
        s.producer.append(100)
        s.start()
        halt = threading.Event()

        def write() -> None:
            while not halt.is_set():
                s.producer.append(20)
                halt.wait(20 / args.rate)  # the producer's pace

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        for _ in range(args.kills):
            fault_pause(rng.uniform(0.5, 1.5))  # a random moment in a steady stream
            s.kill()
            s.start()
        halt.set()
        writer.join()
        outcome = s.finish(timeout=120)
    per_kill = outcome.repeated_per_kill
    print(
        json.dumps(
            {
                "kills": outcome.kills,
                "rate": args.rate,
                "slow": args.slow,
                "written": outcome.written,
                "lost": outcome.lost,
                "repeated_per_kill": per_kill,
                "mean": round(statistics.mean(per_kill), 1) if per_kill else 0,
                "max": max(per_kill, default=0),
                "bound": s.repeat_bound,
                "violations": outcome.violations,
            }
        )
    )


if __name__ == "__main__":
    main()
