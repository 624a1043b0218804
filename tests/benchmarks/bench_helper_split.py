"""Where a catch-up's CPU goes between the daemon and its mapping helper process.

    python -m tests.benchmarks.bench_helper_split FILE [--runs 3]

Runs `audit-otlp run --once` over FILE against the counting sink and samples /proc every 50 ms:
the daemon's CPU-seconds and its helper's (the last sample before it exits), and the wall time.
Prints µs of CPU per row for each, so the two sides of docs/design.md's "Mapping on the second
core" can be weighed (the slower one bounds the rows/s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from tests.benchmarks.bench import Sink, Tools, descendants, peer_binary


def cpu_s(pid: int, clock: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / clock


def one_run(tools: Tools, sink: Sink, path: Path, rows: int) -> tuple[float, float, float]:
    clock = os.sysconf("SC_CLK_TCK")
    sink.reset()
    started = time.monotonic()
    proc = tools.start("audit-otlp", path, sink.url, once=True)
    daemon, helpers = 0.0, {}
    while proc.poll() is None:
        for child in descendants(proc.pid):
            if (c := cpu_s(child, clock)) is not None:
                helpers[child] = c
        if (c := cpu_s(proc.pid, clock)) is not None:
            daemon = c
        time.sleep(0.05)
    wall = time.monotonic() - started
    assert sink.stats()["records"] == rows, "not every row arrived"
    return daemon / rows * 1e6, sum(helpers.values()) / rows * 1e6, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/audit-otlp-bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = sum(1 for _ in args.file.open("rb"))
    tools, sink = Tools(args.workdir, peer_binary(), "json"), Sink(args.workdir / "sink.log")
    try:
        results = [one_run(tools, sink, args.file, rows) for _ in range(args.runs)]
    finally:
        sink.close()
    for daemon, helper, wall in results:
        print(f"daemon {daemon:5.1f} µs/row  helper {helper:5.1f} µs/row  wall {wall:5.2f} s")
    print(
        f"median: daemon {statistics.median(r[0] for r in results):.1f}, helper {statistics.median(r[1] for r in results):.1f} "
        f"µs of CPU per row, {rows / statistics.median(r[2] for r in results):,.0f} rows/s"
    )


if __name__ == "__main__":
    main()
