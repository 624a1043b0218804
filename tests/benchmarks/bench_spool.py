"""What spooling costs: copy the undelivered bytes of a vanished 10 MB version (the producer's
rotation size) into the spool, fsync included, and the disk it takes; then, end to end, how
long after the producer's tail-rewrite the installed daemon (collector down) has the rows spooled.
Not part of the default test run. Prints JSON lines.

    python -m tests.benchmarks.bench_spool                 # 10 MB, from the start and from the middle
    python -m tests.benchmarks.bench_spool --mb 50 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from audit_otlp.source.fileid import identify_fd
from audit_otlp.source.spool import Spool
from tests.helpers.auditgen import AuditWriter
from tests.helpers.scenario import Scenario
from tests.helpers.wait import wait_until


def spool_copy(tmp: Path, megabytes: int, repeat: int) -> None:
    log = tmp / "audit.jsonl"
    writer = AuditWriter(log)
    while not log.exists() or log.stat().st_size < megabytes * 1_000_000:
        writer.append(5000)
    fd = os.open(log, os.O_RDONLY)
    size = os.fstat(fd).st_size
    for label, start in (("whole version", 0), ("second half", size // 2)):
        timings, used = [], 0
        for i in range(repeat):
            spool = Spool(tmp / f"spool-{label[0]}-{i}", 1 << 34)
            began = time.perf_counter()
            record = spool.keep(fd, identify_fd(fd), start)
            timings.append(time.perf_counter() - began)
            st = os.stat(spool.directory / record.name)
            used = st.st_blocks * 512
        print(
            json.dumps(
                {
                    "what": f"spool {label} of a {size / 1e6:.1f} MB version",
                    "bytes_kept": size - start,
                    "seconds_median": round(statistics.median(timings), 4),
                    "seconds_max": round(max(timings), 4),
                    "disk_used_bytes": used,
                    "apparent_size": st.st_size,
                    "repeat": repeat,
                }
            )
        )
    os.close(fd)


def end_to_end(cli: str, tmp: Path, megabytes: int) -> None:
    """Collector down, 10 MB written and then tail-rewritten: from the rename to the spool."""
    with Scenario(cli, tmp, "bench_spool") as s:
        s.producer.append(10)
        s.start()
        assert s.wait_delivered()
        s.mood.mode = "down"
        while s.producer.path.stat().st_size < megabytes * 1_000_000:
            s.producer.append(5000)
        assert wait_until(lambda: s.metric("audit_otlp_lines_read_total") > 10, 30)
        began = time.perf_counter()
        s.producer.rotate("tail_rewrite")
        assert wait_until(lambda: s.metric("audit_otlp_spooled_bytes_total") > 0, 30, 0.002)
        took = time.perf_counter() - began
        spooled = s.metric("audit_otlp_spooled_bytes_total")
        s.mood.mode = "up"
        s.finish()
    print(
        json.dumps(
            {
                "what": "tail-rewrite to spooled (installed daemon, collector down)",
                "seconds": round(took, 3),
                "bytes_spooled": int(spooled),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cli", default="audit-otlp")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spool_copy(Path(tmp), args.mb, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        end_to_end(args.cli, Path(tmp), args.mb)


if __name__ == "__main__":
    main()
