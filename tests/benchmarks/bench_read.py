"""Cost of one read of the audit log, and of one durable append, the ways the daemon could do them
(evidence for source/followed.py FollowedFile.read_chunk and state/durable.py append_durably).

    python -m tests.benchmarks.bench_read [FILE] [--reads 300] [--rounds 7] [--appends 200]

Reads, for a 256 KiB catch-up chunk, a 15 KB live wake-up (40 rows) and a read at end of file:
- `to_thread(os.pread)`: one hop to a worker thread (the daemon before it used aiofiles);
- `daemon: aiofiles read`: FollowedFile.read_chunk itself (lseek on the loop, then aiofiles'
  read on the fd: one hop);
- `aiofiles.os.wrap(os.pread)`: aiofiles' wrapper around a positional read (one hop);
- `aiofiles seek+read`: two hops (why the daemon seeks on the loop instead);
- `os.pread on the loop`: no hop (a page-cache read of a local file: tens of µs at most).
Appends, of one 4 KB record (file fsync each time; a new file's directory once):
- `to_thread(one hop)`: the whole append in one worker-thread call (before aiofiles);
- `daemon: aiofiles`: state.durable.append_durably (open, write, fsync, close: 4 hops);
- `aiofiles.os.wrap(one call)`: the blocking append wrapped whole (one hop, as before).
Each round runs every way once, in an order that rotates between rounds; figures are medians
over rounds of CPU µs (the process's, worker threads included) and wall µs per operation.
Without FILE, a 32 MB file of generated rows is written to a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiofiles
import aiofiles.os

from audit_otlp.source.followed import open_followed
from audit_otlp.state.durable import append_durably, fsync_directory
from tests.benchmarks.gen import write_file

Timed = Callable[[int], Awaitable[None]]  # run operation number i


async def measure(ways: dict[str, Timed], count: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Median (CPU µs, wall µs) per operation of each way, over alternating rounds."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    names = list(ways)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(count):
                await ways[name](i)
            samples[name].append(((time.process_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6))
    return {
        name: (statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs)) for name, runs in samples.items()
    }


def report(title: str, results: dict[str, tuple[float, float]], baseline: str, candidate: str) -> None:
    print(f"{title}: CPU µs (wall µs) per operation, medians")
    for name, (cpu, wall) in results.items():
        print(f"  {name:<28} {cpu:8.1f} ({wall:8.1f})")
    (bc, bw), (cc, cw) = results[baseline], results[candidate]
    print(f"  {candidate} / {baseline}: CPU x{cc / bc:.2f}, wall x{cw / bw:.2f}")


async def reads(path: Path, count: int, rounds: int) -> None:
    size = path.stat().st_size
    followed = open_followed(path, 1 << 20)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    two_hops = await aiofiles.open(path, "rb")
    wrapped_pread = aiofiles.os.wrap(os.pread)
    try:
        for chunk in (256 * 1024, 15_000, 0):
            n = chunk or 256 * 1024

            def offset(i: int, chunk: int = chunk) -> int:
                return (i * chunk) % (size - chunk) if chunk else size  # 0: at the end of the file

            async def to_thread_pread(i: int, n: int = n) -> None:
                await asyncio.to_thread(os.pread, fd, n, offset(i))

            async def daemon_read(i: int, n: int = n) -> None:
                followed.read_offset = offset(i)
                await followed.read_chunk(n)

            async def aiofiles_wrap_pread(i: int, n: int = n) -> None:
                await wrapped_pread(fd, n, offset(i))

            async def aiofiles_seek_read(i: int, n: int = n) -> None:
                await two_hops.seek(offset(i))
                await two_hops.read(n)

            async def pread_on_loop(i: int, n: int = n) -> None:
                os.pread(fd, n, offset(i))

            ways: dict[str, Timed] = {
                "to_thread(os.pread)": to_thread_pread,
                "daemon: aiofiles read": daemon_read,
                "aiofiles.os.wrap(os.pread)": aiofiles_wrap_pread,
                "aiofiles seek+read": aiofiles_seek_read,
                "os.pread on the loop": pread_on_loop,
            }
            results = await measure(ways, count, rounds)
            report(f"read of {chunk or 'nothing (EOF)'}", results, "to_thread(os.pread)", "daemon: aiofiles read")
    finally:
        followed.close()
        os.close(fd)
        await two_hops.close()


def append_in_one_call(path: Path, data: bytes) -> None:
    """The append as the daemon did it before aiofiles (blocking; it ran in one to_thread call)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_directory(path.parent)


async def appends(directory: Path, count: int, rounds: int) -> None:
    head, tail = b'{"reason":"refused","line":"', b'"}\n'
    record = head + b"x" * (4096 - len(head) - len(tail)) + tail
    append_in_one_hop = aiofiles.os.wrap(append_in_one_call)

    async def to_thread_append(i: int) -> None:
        await asyncio.to_thread(append_in_one_call, directory / "to_thread" / "dead-letter.jsonl", record)

    async def daemon_append(i: int) -> None:
        await append_durably(directory / "aiofiles" / "dead-letter.jsonl", record)

    async def aiofiles_wrap_append(i: int) -> None:
        await append_in_one_hop(directory / "wrap" / "dead-letter.jsonl", record)

    ways: dict[str, Timed] = {
        "to_thread(one hop)": to_thread_append,
        "daemon: aiofiles": daemon_append,
        "aiofiles.os.wrap(one call)": aiofiles_wrap_append,
    }
    results = await measure(ways, count, rounds)
    report(f"durable append of {len(record)} bytes", results, "to_thread(one hop)", "daemon: aiofiles")


async def main(file: Path | None, count: int, rounds: int, append_count: int) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR") or "/tmp") as tmp:
        if file is None:
            file = Path(tmp) / "audit.jsonl"
            write_file(file, 1000)
            write_file(file, 32_000_000 * 1000 // file.stat().st_size + 1)
        await reads(file, count, rounds)
        await appends(Path(tmp), append_count, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", type=Path, help="an audit log to read (default: 32 MB generated)")
    parser.add_argument("--reads", type=int, default=300, help="reads per way per round")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (the figures are their medians)")
    parser.add_argument("--appends", type=int, default=200, help="durable appends per way per round")
    args = parser.parse_args()
    asyncio.run(main(args.file, args.reads, args.rounds, args.appends))
