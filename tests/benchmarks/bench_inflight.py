"""Throughput of `audit-otlp run --once` against a loopback collector that answers every request
after a fixed latency, for several export.max_in_flight values. Not part of the default test run.

    python -m tests.benchmarks.bench_inflight                       # 20000 rows, 20 ms, in-flight 1 and 4
    python -m tests.benchmarks.bench_inflight --rows 50000 --max-spans 100 --latency 0.02 --in-flight 1 2 4 8
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson

from tests.helpers.auditgen import AuditWriter
from tests.helpers.daemon import daemon_env, write_fast_config


class LatencyCollector:
    """A lean OTLP/HTTP sink: counts spans, answers 200 after `latency` (no proto validation,
    which would cost more CPU than the daemon under test on a 2-core machine)."""

    def __init__(self, latency: float) -> None:
        self.spans = 0
        self.requests = 0
        lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # like real collectors: no 40 ms delayed-ACK stalls

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                n = sum(len(ss["spans"]) for rs in orjson.loads(body)["resourceSpans"] for ss in rs["scopeSpans"])
                time.sleep(latency)
                with lock:
                    sink.spans += n
                    sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run(cli: str, rows: int, latency: float, in_flight: int, max_spans: int) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        audit = tmp / "audit.jsonl"
        writer = AuditWriter(audit)
        for _ in range(rows // 1000):
            writer.append(1000)
        writer.append(rows % 1000)
        config = write_fast_config(
            tmp / "bench.toml", f"[export]\nmax_in_flight = {in_flight}\n[batch]\nmax_spans = {max_spans}\n"
        )
        collector = LatencyCollector(latency)
        try:
            started = time.monotonic()
            result = subprocess.run(
                [
                    cli,
                    "run",
                    "--once",
                    "--deadline",
                    "600",
                    "--config",
                    str(config),
                    "--file",
                    str(audit),
                    "--checkpoint",
                    str(tmp / "cp.json"),
                    "--endpoint",
                    collector.endpoint,
                ],
                env=daemon_env(AUDIT_OTLP_LOG_LEVEL="warning"),
                capture_output=True,
                text=True,
            )
            elapsed = time.monotonic() - started
        finally:
            collector.close()
        if result.returncode != 0:
            raise SystemExit(f"audit-otlp failed ({result.returncode}): {result.stderr[-2000:]}")
        return elapsed, collector.spans, collector.requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--latency", type=float, default=0.02, help="collector answer latency in seconds")
    parser.add_argument("--max-spans", type=int, default=512, help="batch.max_spans")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    cli = shutil.which("audit-otlp", path=str(Path(sys.executable).parent)) or shutil.which("audit-otlp")
    if cli is None:
        raise SystemExit("audit-otlp is not installed")
    print(f"rows={args.rows} latency={args.latency * 1000:.0f}ms batch.max_spans={args.max_spans}")
    for n in args.in_flight:
        elapsed, spans, requests = run(cli, args.rows, args.latency, n, args.max_spans)
        assert spans == args.rows, f"collector got {spans} spans, expected {args.rows}"
        print(
            f"max_in_flight={n}: {elapsed:6.2f} s  {spans / elapsed:8.0f} spans/s  ({requests} requests, process start included)"
        )


if __name__ == "__main__":
    main()
