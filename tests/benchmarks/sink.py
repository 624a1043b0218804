"""A counting OTLP/HTTP collector for the benchmark: fast enough never to be the bottleneck.

It never parses a body. It counts records with `bytes.count` on one key that appears exactly
once per record and nowhere else (string values inside OTLP/JSON have their quotes escaped):
- POST /v1/traces (audit-otlp, OTLP/JSON spans): `"spanId"`
- POST /v1/logs (otelcol filelog, OTLP/JSON log records): `"observedTimeUnixNano"`
- protobuf bodies (otelcol with encoding: proto): not supported, the peer is run with json.
gzip bodies are decompressed first. With latency tracking on, every `@T<19 digits>` marker
(the append time a row carries, in ns since the epoch) gives one latency sample at arrival.

Control (GET, same port): /stats -> JSON counters, /reset -> zero everything.
Run: python sink.py PORT  (prints "ready" when listening). Single-threaded asyncio.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import resource
import sys
import time

MARKER = re.compile(rb"@T(\d{19})")
RECORD_KEYS = {b"/v1/traces": b'"spanId"', b"/v1/logs": b'"observedTimeUnixNano"'}
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Counts:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.records = 0
        self.requests = 0
        self.body_bytes = 0
        self.first_arrival = 0.0
        self.last_arrival = 0.0
        self.latencies_ms: list[float] = []
        self.seen_markers: set[bytes] = set()  # the peer repeats a row's text (body + attributes)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_at_reset = usage.ru_utime + usage.ru_stime

    def record(self, path: bytes, body: bytes, track_latency: bool) -> None:
        now_ns = time.time_ns()
        key = RECORD_KEYS.get(path)
        if key is None:
            return
        n = body.count(key)
        self.records += n
        self.requests += 1
        self.body_bytes += len(body)
        now = time.monotonic()
        if not self.first_arrival:
            self.first_arrival = now
        self.last_arrival = now
        if track_latency and b"@T" in body:
            for marker in set(MARKER.findall(body)):
                if marker not in self.seen_markers:
                    self.seen_markers.add(marker)
                    self.latencies_ms.append((now_ns - int(marker)) / 1e6)

    def stats(self) -> dict[str, object]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            return round(lat[min(int(len(lat) * p), len(lat) - 1)], 1) if lat else None

        return {
            "records": self.records,
            "requests": self.requests,
            "body_bytes": self.body_bytes,
            "first_arrival": self.first_arrival,
            "last_arrival": self.last_arrival,
            "cpu_s": usage.ru_utime + usage.ru_stime - self.cpu_at_reset,
            "latency_samples": len(lat),
            "latency_p50_ms": pct(0.50),
            "latency_p99_ms": pct(0.99),
            "latency_max_ms": round(lat[-1], 1) if lat else None,
        }


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counts: Counts) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            request_line, _, header_block = head.partition(b"\r\n")
            method, path, _ = request_line.split(b" ", 2)
            headers = {}
            for raw in header_block.split(b"\r\n"):
                name, sep, value = raw.partition(b":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            body = b""
            if b"content-length" in headers:
                body = await reader.readexactly(int(headers[b"content-length"]))
            elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                parts = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")
                        break
                    parts.append(await reader.readexactly(size))
                    await reader.readexactly(2)
                body = b"".join(parts)
            if method == b"GET":
                if path == b"/reset":
                    counts.reset()
                    counts.track_latency = False  # type: ignore[attr-defined]
                elif path == b"/track-latency":
                    counts.track_latency = True  # type: ignore[attr-defined]
                reply = json.dumps(counts.stats()).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(reply) + reply
                )
            else:
                if headers.get(b"content-encoding") == b"gzip":
                    body = gzip.decompress(body)
                counts.record(path.split(b"?")[0], body, getattr(counts, "track_latency", False))
                writer.write(OK)
            await writer.drain()
    finally:
        writer.close()


async def main(port: int) -> None:
    counts = Counts()
    server = await asyncio.start_server(lambda r, w: handle(r, w, counts), "127.0.0.1", port, limit=1 << 20)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
