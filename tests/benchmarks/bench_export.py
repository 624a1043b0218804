"""Cost of one export request (Exporter._post against the counting sink), and what it leaves
for the cycle collector. Not part of the default test run.

    python -m tests.benchmarks.bench_export [--requests 200] [--spans 512]

Prints µs per request (and per span) and, with the cycle collector off, how many objects and
how much RSS each request leaves behind: a request whose objects form a reference cycle keeps
its ~0.8 MB body alive until the next gc pass.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import time
from pathlib import Path

from audit_otlp.delivery.policy import Exporter
from audit_otlp.delivery.records import DurableLog
from audit_otlp.delivery.settings import ExportSettings
from audit_otlp.mapping.chain import ChainHasher, ChainState
from audit_otlp.mapping.envelope import make_envelope, resource_attributes
from audit_otlp.mapping.ids import MappingOptions
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.source.lines import LineSplitter
from tests.benchmarks.gen import RowGenerator
from tests.helpers.delivery import metrics_and_state
from tests.helpers.wait import free_port


class _NoEvents:
    def malformed_line(self, reason: str) -> None:
        pass

    def chain_break(self, *args: object) -> None:
        pass


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4


async def run(requests: int, spans_per_request: int, tmp: Path) -> None:
    lines = LineSplitter(1 << 20).feed(RowGenerator().lines(spans_per_request))
    mapper = RowMapper(MappingOptions(), ChainHasher(), ChainState(), _NoEvents())
    spans = [mapper.map_line(line, 1).spans[0] for line in lines]
    envelope = make_envelope(resource_attributes("bench", {}, False))
    port = free_port()
    sink = subprocess.Popen([sys.executable, str(Path(__file__).with_name("sink.py")), str(port)], stdout=subprocess.PIPE)
    try:
        assert sink.stdout is not None and b"ready" in sink.stdout.readline()
        settings = ExportSettings(endpoint=f"http://127.0.0.1:{port}/v1/traces", headers={}, vendor_headers={})
        exporter = Exporter(settings, envelope, *metrics_and_state(), DurableLog(tmp / "dl.jsonl"))
        await exporter.start()
        body_len = len(envelope.body(spans))
        for _ in range(5):  # warm the connection
            await exporter.transport.post(envelope.body(spans))
        gc.collect()
        gc.disable()
        try:
            rss0, t0, c0 = rss_kb(), time.perf_counter(), time.process_time()
            for _ in range(requests):
                answer = await exporter.transport.post(envelope.body(spans))  # a fresh body, as in the daemon
                assert answer.status == 200, answer
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            rss1 = rss_kb()
            garbage = gc.collect()
        finally:
            gc.enable()
        await exporter.aclose()
        print(f"{requests} requests of {spans_per_request} spans ({body_len / 1e6:.2f} MB)")
        print(f"  wall {elapsed / requests * 1e6:8.0f} µs/request, {elapsed / requests / spans_per_request * 1e6:.2f} µs/span")
        print(
            f"  CPU  {cpu / requests * 1e6:8.0f} µs/request, {cpu / requests / spans_per_request * 1e6:.2f} µs/span (this process)"
        )
        print(f"  gc off: RSS +{(rss1 - rss0) / requests:.0f} KB/request, {garbage / requests:.1f} objects in cycles/request")
    finally:
        sink.terminate()
        sink.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--spans", type=int, default=512)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.requests, args.spans, Path(tmp)))


if __name__ == "__main__":
    main()
