"""The one place that wires the stages together and owns start-up and shutdown.

    Tailer --lines--> RowMapper + BatchBuilder --Batch--> bounded queue --> N export workers
                                                                               |
    CheckpointKeeper <--frontier-- AckTracker <--settled batch (delivered / dead-lettered)

At most `export.max_in_flight` batches are being sent and one more waits in the queue, so memory
is bounded however far the collector falls behind: when it is away, reading simply stops and the
file is the buffer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from audit_otlp.state.acks import AckTracker
from audit_otlp.delivery.batching import Batch, BatchBuilder, BatchLimits, SpanSource
from audit_otlp.mapping.chain import ChainHasher, ChainState, ChainVerdict
from audit_otlp.state.checkpoint import Checkpoint, CheckpointError, CheckpointKeeper, CheckpointStore, Cursor
from audit_otlp.config.loader import Config, mask_url
from audit_otlp.delivery.records import DurableLog
from audit_otlp.commands.export import DryRunSink
from audit_otlp.delivery.policy import Exporter, ExportSettings, Outcome
from audit_otlp.runtime.health import HealthServer
from audit_otlp.source.lines import Line
from audit_otlp.runtime.logs import apply_log_settings
from audit_otlp.mapping.spans import Envelope, MappingOptions, make_envelope, resource_attributes
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.progress import Progress, ProgressReporter, TerminalLine
from audit_otlp.runtime.reload import ReloadPlan, reload_config
from audit_otlp.delivery.retry import Backoff
from audit_otlp.mapping.rows import RowMapper
from audit_otlp.runtime.runstate import RunState
from audit_otlp.runtime.sdnotify import Notifier
from audit_otlp.source.resume import ResumePoint
from audit_otlp.source.tailer import LineChunk, Tailer

log = logging.getLogger("audit_otlp")

EXIT_OK, EXIT_DEADLINE, EXIT_USAGE, EXIT_FATAL = 0, 1, 2, 3


class FatalError(Exception):
    """A runtime error the daemon cannot work around (exit 3, one-line reason)."""


class Sink(Protocol):
    async def start(self) -> None: ...
    async def deliver(self, batch: Batch) -> Outcome: ...
    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class RunOptions:
    once: bool = False
    deadline: float | None = None
    dry_run: bool = False
    foreground: bool = False


def build_envelope(config: Config) -> Envelope:
    # The OpenTelemetry rule: OTEL_SERVICE_NAME (or our own key) wins; otherwise a service.name
    # given in OTEL_RESOURCE_ATTRIBUTES applies; the embedded default comes last.
    service_name = config["resource.service_name"]
    if config.origin["resource.service_name"] == "default":
        service_name = config["resource.attributes"].get("service.name", service_name)
    return make_envelope(resource_attributes(service_name, config["resource.attributes"], config["mapping.dd_llmobs_enabled"]))


def build_export_settings(config: Config) -> ExportSettings:
    vendor_headers = config.vendor.headers_for(config.endpoint) if config.vendor else {}
    return ExportSettings(
        endpoint=config.endpoint,
        headers=config["export.headers"],
        vendor_headers=vendor_headers,
        timeout=config["export.timeout"],
        compression=config["export.compression"],
        max_in_flight=config["export.max_in_flight"],
        initial_backoff=config["retry.initial_backoff"],
        max_backoff=config["retry.max_backoff"],
        auth_backoff=config["retry.auth_backoff"],
        max_request_bytes=config["export.max_request_bytes"],
        certificate=str(config["export.certificate"]) if config["export.certificate"] else None,
        client_certificate=str(config["export.client_certificate"]) if config["export.client_certificate"] else None,
        client_key=str(config["export.client_key"]) if config["export.client_key"] else None,
        insecure=config["export.insecure"],
    )


class Daemon:
    def __init__(self, config: Config, options: RunOptions, notifier: Notifier | None = None,
                 terminal: TerminalLine | None = None, reloader: Callable[[], Config] | None = None,
                 verbose: bool = False) -> None:
        self.config = config
        self.options = options
        self.terminal = terminal  # --foreground on a TTY: the live progress line
        self.reloader = reloader  # SIGHUP: how to read the configuration again
        self.verbose = verbose
        self._builder: BatchBuilder | None = None
        self._settled_spans = 0  # this run, delivered or dead-lettered (for rates)
        self._settled_bytes = 0
        self.metrics = Metrics()
        self.state = RunState()
        self.notifier = notifier or Notifier()
        self.envelope = build_envelope(config)
        self.store = CheckpointStore(config.checkpoint_path)
        self.acks = AckTracker()
        # One batch waiting is enough to keep every worker busy (the reader refills it while they
        # send); each extra one would cost ~1 MB of RSS for nothing.
        self.queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        self.stopping = asyncio.Event()
        self._busy_workers = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Notified whenever a batch is settled: --once waits on it, and so does the reader while
        # the window of unsettled batches is full.
        self._settled = asyncio.Condition()
        self._window = config["export.max_in_flight"]
        self._unsettled_source_bytes = 0  # bytes of lines read but not yet settled
        self.sink: Sink
        if options.dry_run:
            self.sink = DryRunSink(self.envelope)
        else:
            receipts_path = config["delivery.receipts_path"]
            self.sink = Exporter(
                build_export_settings(config), self.envelope, self.metrics, self.state,
                DurableLog(config["dead_letter.path"]), DurableLog(receipts_path) if receipts_path else None,
            )
        self.tailer = Tailer(
            config.source_path,
            max_line_bytes=config["source.max_line_bytes"],
            poll_interval=config["source.poll_interval"],
            rotated_glob=config["source.rotated_glob"],
            events=self._SourceEvents(self),
        )
        self.keeper: CheckpointKeeper  # set in _load_checkpoint
        self.mapper: RowMapper

    # -- observability adapters ----------------------------------------------------------------

    class _SourceEvents:
        def __init__(self, daemon: "Daemon") -> None:
            self.d = daemon

        def rotation(self, kind: str, path: Path) -> None:
            self.d.metrics.rotations.labels(kind=kind).inc()
            log.info("rotation detected (%s) on %s", kind, path)

        def resume_gap(self, reason: str) -> None:
            self.d.metrics.resume_gaps.inc()
            log.error("RESUME GAP: %s; reading the current file from its beginning (rows between may be missing)", reason)

        def held_files(self, count: int, pending_bytes: int) -> None:
            self.d.metrics.rotated_files_held.set(count)
            self.d.metrics.rotated_bytes_pending.set(pending_bytes)

    class _RowEvents:
        def __init__(self, daemon: "Daemon") -> None:
            self.d = daemon
            self.breaks = 0

        def malformed_line(self, reason: str) -> None:
            self.d.metrics.malformed_lines.labels(reason=reason).inc()

        def chain_break(self, verdict: ChainVerdict, offset: int, line_number: int) -> None:
            self.d.metrics.chain_breaks.inc()
            self.breaks += 1
            what = "restarts with GENESIS" if verdict.restart else "breaks"
            log.error(
                "HASH CHAIN %s at line %d (offset %d): expected prev_hash %s, found %s; shipping continues",
                what.upper(), line_number, offset, verdict.expected, verdict.found,
            )

    # -- run -----------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        if self.reloader is not None:
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping: no more reading; in-flight requests get %.1f s", self.config["shutdown.grace_period"])
            self.stopping.set()

    def request_reload(self) -> None:
        assert self.reloader is not None
        result = reload_config(self.config, self.reloader)
        if isinstance(result, str):
            log.error("SIGHUP: the new configuration is invalid, keeping the running one: %s", result)
            return
        self.apply_reload(result)

    def apply_reload(self, plan: ReloadPlan) -> None:
        """Put reloadable settings into effect: new requests and batches use them at once."""
        self.config = config = plan.config
        # --foreground chose its format for a person at a terminal; SIGHUP leaves that alone.
        apply_log_settings(None if self.options.foreground else config["log.format"], config["log.level"], self.verbose)
        if self._builder is not None:
            self._builder.limits = BatchLimits(config["batch.max_spans"], config["batch.max_bytes"], config["batch.max_wait"])
        if isinstance(self.sink, Exporter):
            self.sink.settings = dataclasses.replace(
                self.sink.settings, initial_backoff=config["retry.initial_backoff"],
                max_backoff=config["retry.max_backoff"], auth_backoff=config["retry.auth_backoff"])
        (log.warning if plan.needs_restart else log.info)("SIGHUP: configuration reloaded: %s", plan.describe())

    async def _run(self) -> int:
        checkpoint = self._load_checkpoint()
        row_events = self._RowEvents(self)
        row_events.breaks = checkpoint.chain_breaks
        self._row_events = row_events
        hasher = ChainHasher(self.config.chain_key) if self.config["chain.verify"] else None
        self.mapper = RowMapper(
            MappingOptions(self.config["mapping.trace_id_from"]), hasher,
            ChainState(last_hash=checkpoint.cursor.chain_last_hash), row_events,
        )
        self._last_cursor = checkpoint.cursor
        resume = None
        if checkpoint.cursor.offset or checkpoint.cursor.identity is not None:
            resume = ResumePoint(checkpoint.cursor.identity, checkpoint.cursor.offset,
                                 checkpoint.cursor.last_line_sha256, checkpoint.cursor.last_line_length)
        await self.tailer.start(resume, self.config["source.start_at"])
        self.state.file_reachable = self.tailer.current is not None
        if self.tailer.current is None:
            log.info("waiting for %s to appear", self.config.source_path)
        await self.sink.start()
        health = None
        if self.config["health.listen"] and not self.options.dry_run:
            host, port = self.config["health.listen"]
            health = HealthServer(host, port, self.state, self.metrics, self.config["health.failing_after"], self._refresh_gauges)
            try:
                await health.start()
            except OSError as exc:
                raise FatalError(f"cannot listen on {host}:{port} for health checks: {exc.strerror or exc}") from exc

        workers = [asyncio.create_task(self._export_worker(), name=f"export-{i}") for i in range(self.config["export.max_in_flight"])]
        housekeeping = [
            asyncio.create_task(self.keeper.run(), name="checkpoint"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        if self.terminal is not None:
            reporter = ProgressReporter(self.terminal, self._progress)
            housekeeping.append(asyncio.create_task(reporter.run(), name="progress"))
        reader = asyncio.create_task(self._read_loop(), name="reader")
        self.notifier.ready(self._status_line())
        log.info(
            "following %s -> %s (checkpoint %s)", self.config.source_path,
            "stdout (dry run)" if self.options.dry_run else mask_url(self.config.endpoint), self.config.checkpoint_path,
        )
        exit_code = EXIT_OK
        try:
            if self.options.once:
                exit_code = await self._run_once(reader)
            else:
                stop_wait = asyncio.create_task(self.stopping.wait())
                done, _ = await asyncio.wait({reader, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                if reader in done:
                    reader.result()  # re-raise a reader crash
        finally:
            self.notifier.stopping()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await self._drain_in_flight(self.config["shutdown.grace_period"])
            for task in workers + housekeeping:
                task.cancel()
            await asyncio.gather(*workers, *housekeeping, return_exceptions=True)
            await self.keeper.flush()
            await self.sink.aclose()
            final_status = self._status_line()
            await self.tailer.close()
            if health is not None:
                await health.aclose()
            log.info("stopped: %s", final_status)
        return exit_code

    async def _run_once(self, reader: asyncio.Task[None]) -> int:
        deadline = self.options.deadline
        async def finished() -> None:
            await reader
            async with self._settled:
                await self._settled.wait_for(lambda: not self.acks.unsettled)
        work = asyncio.create_task(finished())
        stop_wait = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait({work, stop_wait}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if work in done:
            work.result()
            if self.tailer.current is not None and self.tailer.current.splitter.pending_bytes:
                log.warning("the last line has no newline yet; it is held for the next run")
            log.info("--once: everything up to the end of the file is settled")
            return EXIT_OK
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        if self.stopping.is_set():
            return EXIT_OK
        log.error("--once: deadline of %.1f s passed with %d batches not delivered", deadline or 0, self.acks.unsettled)
        return EXIT_DEADLINE

    def _load_checkpoint(self) -> Checkpoint:
        if not self.options.dry_run:
            try:
                self.store.ensure_writable()
            except (CheckpointError, OSError) as exc:
                raise FatalError(str(exc)) from exc
        checkpoint = self.store.load()
        if checkpoint is not None and checkpoint.cursor.path != str(self.config.source_path):
            log.warning("the checkpoint was for %s, now following %s: matching by file identity and content",
                        checkpoint.cursor.path, self.config.source_path)
        if checkpoint is None:
            checkpoint = Checkpoint(Cursor(str(self.config.source_path), None, 0))
        self.state.checkpoint_loaded = True
        self.keeper = CheckpointKeeper(self.store, checkpoint, self.config["checkpoint.interval"], self.metrics,
                                       self.state, enabled=not self.options.dry_run)
        return checkpoint

    # -- the stages ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        limits = BatchLimits(self.config["batch.max_spans"], self.config["batch.max_bytes"], self.config["batch.max_wait"])
        builder = self._builder = BatchBuilder(self.envelope, limits)
        settled_cursor = self._last_cursor
        complete_cursor = settled_cursor  # the end of the last line whose spans are all in `builder`
        once = self.options.once
        while not self.stopping.is_set():
            deadline = builder.deadline()
            timeout = 0.0 if once else (None if deadline is None else max(deadline - time.monotonic(), 0.0))
            chunk = await self.tailer.read(timeout)
            self.state.file_reachable = self.tailer.current is not None or bool(self.tailer.draining)
            if chunk is not None:
                complete_cursor = await self._consume(chunk, builder, complete_cursor)
            deadline = builder.deadline()
            if deadline is not None and (builder.full or time.monotonic() >= deadline or (once and chunk is None)):
                await self._flush(builder, complete_cursor)
            if once and chunk is None and self.tailer.at_end:
                if builder.opened_at is not None:
                    await self._flush(builder, complete_cursor)
                return

    async def _consume(self, chunk: LineChunk, builder: BatchBuilder, cursor: Cursor) -> Cursor:
        """Map a chunk's lines into `builder`; returns the cursor after its last line.

        The hot loop of a catch-up: per line it only maps and appends. A Cursor (a frozen
        dataclass, ~1 µs to build) is made only when a batch is handed over and at the end of
        the chunk, from `done`: what the cursor after the last fully added line needs.
        """
        observed_ns = time.time_ns()
        mapper = self.mapper
        chain = mapper.chain
        path, identity = chunk.path, chunk.identity
        path_str = str(path)
        mapper.line_number = chunk.first_line_number - 1
        consumed = chunk.lines[-1].end - chunk.lines[0].offset
        # Counted as backlog from the moment the tailer hands the lines over: _flush below may wait
        # a long time for a free export worker, and those bytes are not delivered meanwhile.
        self._unsettled_source_bytes += consumed
        done: tuple[Line, bytes, str | None, int] | None = None  # (line, digest, chain hash, line number)

        def cursor_after() -> Cursor:
            if done is None:
                return cursor
            line, digest, chain_hash, line_number = done
            return Cursor(path_str, identity, line.end, digest.hex(), line.length if line.data is not None else None,
                          chain_hash, line_number)

        for line in chunk.lines:
            mapped = mapper.map_line(line, observed_ns)
            spans = mapped.spans
            if spans:
                sha = mapped.digest.hex()
                for span in spans:
                    if not builder.fits(span):
                        await self._flush(builder, cursor_after())
                    builder.add(span, SpanSource(path, identity, line.offset, line.data, sha, line.end))
            else:
                builder.touch()
            done = (line, mapped.digest, chain.last_hash, mapper.line_number)
            if builder.full:
                await self._flush(builder, cursor_after())
        cursor = cursor_after()
        builder.source_bytes += consumed
        self.metrics.lines_read.inc(len(chunk.lines))
        self.state.rows_read += len(chunk.lines)
        return cursor

    async def _flush(self, builder: BatchBuilder, end: Cursor) -> None:
        """Hand the pending spans to the export workers.

        At most `export.max_in_flight` batches may be unsettled or settled-but-behind-the-frontier
        at once: when the oldest request is stuck in retries, the reader waits instead of letting
        newer batches pile up behind it, so a crash repeats at most the requests in flight."""
        async with self._settled:
            await self._settled.wait_for(lambda: self.acks.unsettled < self._window)
        seq = self.acks.register(end)
        batch = builder.take(seq, end)
        await self.queue.put(batch)

    async def _export_worker(self) -> None:
        while True:
            batch = await self.queue.get()
            self._busy_workers += 1
            self._idle.clear()
            try:
                outcome = await self._deliver_until_settled(batch)
                self.state.dead_lettered_spans += outcome.dead_lettered
                frontier = self.acks.settle(batch.seq)
                self.keeper.advance(frontier, outcome.delivered, outcome.rejected, self._row_events.breaks)
                self._unsettled_source_bytes -= batch.source_bytes
                self._settled_spans += len(batch.spans)
                self._settled_bytes += batch.source_bytes
                async with self._settled:
                    self._settled.notify_all()
            finally:
                self._busy_workers -= 1
                if self._busy_workers == 0:
                    self._idle.set()
                self.queue.task_done()

    async def _deliver_until_settled(self, batch: Batch) -> Outcome:
        """The sink retries every failure it knows; an unexpected error must not kill the worker
        (the batch would never settle and the checkpoint would stall), so log it and try again."""
        backoff = Backoff(self.config["retry.initial_backoff"], self.config["retry.max_backoff"])
        while True:
            try:
                return await self.sink.deliver(batch)
            except Exception:  # noqa: BLE001 - any bug in a sink must cost time, never rows
                log.exception("unexpected error while delivering a batch of %d spans; retrying it", len(batch))
                await asyncio.sleep(backoff.next_delay())

    async def _drain_in_flight(self, grace: float) -> None:
        """Let requests already being sent finish within the grace period; abandon the rest."""
        if self._busy_workers == 0:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        except TimeoutError:
            log.warning("grace period over: abandoning %d in-flight requests (they will be sent again)", self._busy_workers)

    async def _heartbeat(self) -> None:
        """Event-loop liveness for /healthz and the systemd watchdog, plus a STATUS refresh."""
        interval = min(self.notifier.watchdog_interval() or 5.0, 5.0)
        while True:
            self.state.loop_heartbeat = time.monotonic()
            self.notifier.watchdog()
            self.notifier.status(self._status_line())
            await asyncio.sleep(interval)

    # -- reporting -----------------------------------------------------------------------------

    def _refresh_gauges(self) -> None:
        # Not yet delivered = not yet read + read but not yet settled.
        backlog = self.tailer.backlog_bytes() + self._unsettled_source_bytes
        self.state.backlog_bytes = backlog
        self.metrics.backlog_bytes.set(backlog)

    def _progress(self) -> Progress:
        self._refresh_gauges()
        return Progress(self._settled_spans, self._settled_bytes, self.state.backlog_bytes)

    def _status_line(self) -> str:
        self._refresh_gauges()
        waiting = "" if self.tailer.current is not None or self.tailer.draining else f"waiting for {self.config.source_path}; "
        return (
            f"{waiting}delivered {self.state.delivered_spans} spans of {self.state.rows_read} rows read, "
            f"backlog {self.state.backlog_bytes} bytes, "
            f"{self.acks.unsettled} batches in flight"
            + (f", last error: {self.state.last_error}" if self.state.failing_since is not None else "")
        )


def run_daemon(config: Config, options: RunOptions, runner: Callable[[Awaitable[int]], int] = asyncio.run,
               terminal: TerminalLine | None = None, reloader: Callable[[], Config] | None = None,
               verbose: bool = False) -> int:
    daemon = Daemon(config, options, terminal=terminal, reloader=reloader, verbose=verbose)
    return runner(daemon.run())
