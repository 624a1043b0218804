"""Cost of one read of the audit log the ways the tailer could do it (evidence for tailer.py).

    python -m tests.benchmarks.bench_read FILE [--reads 300]

aiofiles' seek + read (two hops to a worker thread), one asyncio.to_thread(os.pread), and
os.pread on the event-loop thread (a page-cache read of a local file: tens of µs at most), for
a 256 KiB catch-up chunk, a 15 KB live wake-up (40 rows) and a read at end of file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import aiofiles


async def main(path: str, reads: int) -> None:
    size = os.path.getsize(path)
    for chunk in (256 * 1024, 15_000, 0):

        def offset(i: int) -> int:
            return (i * chunk) % (size - chunk) if chunk else size  # 0: at the end of the file

        n = chunk or 256 * 1024
        results = []
        handle = await aiofiles.open(path, "rb")
        t, w = time.process_time(), time.perf_counter()
        for i in range(reads):
            await handle.seek(offset(i))
            await handle.read(n)
        results.append((time.process_time() - t, time.perf_counter() - w))
        await handle.close()
        fd = os.open(path, os.O_RDONLY)
        try:
            t, w = time.process_time(), time.perf_counter()
            for i in range(reads):
                await asyncio.to_thread(os.pread, fd, n, offset(i))
            results.append((time.process_time() - t, time.perf_counter() - w))
            t, w = time.process_time(), time.perf_counter()
            for i in range(reads):
                os.pread(fd, n, offset(i))
            results.append((time.process_time() - t, time.perf_counter() - w))
        finally:
            os.close(fd)
        (a, aw), (b, bw), (c, cw) = ((cpu / reads * 1e6, wall / reads * 1e6) for cpu, wall in results)
        print(
            f"read of {chunk or 'nothing (EOF)'}: CPU µs (wall): aiofiles seek+read {a:.0f} ({aw:.0f}), "
            f"to_thread(os.pread) {b:.0f} ({bw:.0f}), os.pread on the loop {c:.0f} ({cw:.0f})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--reads", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.file, args.reads))
