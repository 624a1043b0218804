"""One daemon process from start to exit: load the checkpoint, start the stages in order, handle
signals (stop, SIGHUP reload), keep the heartbeat, and shut down in order (docs/design.md,
"Start-up and shutdown"). What runs in between is `pipeline.Pipeline`; what is built from the
configuration is `wiring`."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from audit_otlp.config import Config, mask_url
from audit_otlp.delivery.batching import BatchBuilder
from audit_otlp.delivery.policy import Exporter
from audit_otlp.runtime import wiring
from audit_otlp.runtime.events import RowObserver, SourceObserver
from audit_otlp.runtime.health import HealthServer
from audit_otlp.runtime.logs import apply_log_settings
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.pipeline import Lane, Pipeline
from audit_otlp.runtime.progress import Progress, ProgressReporter, TerminalLine
from audit_otlp.runtime.reload import ReloadPlan, reload_config
from audit_otlp.runtime.runstate import RunState
from audit_otlp.runtime.sdnotify import Notifier
from audit_otlp.source.sources import expand
from audit_otlp.state.checkpoint import Checkpoint, NewerCheckpointError
from audit_otlp.state.store import CheckpointError, CheckpointStore

log = logging.getLogger("audit_otlp")

EXIT_OK, EXIT_DEADLINE, EXIT_USAGE, EXIT_FATAL = 0, 1, 2, 3


class FatalError(Exception):
    """A runtime error the daemon cannot work around (exit 3, one-line reason)."""


class Daemon:
    # Where each reloadable section takes effect (a test checks every key marked reloadable in
    # config.KEYS has its section here).
    RELOAD_APPLIERS: ClassVar[tuple[str, ...]] = ("log", "batch", "retry")

    def __init__(
        self,
        config: Config,
        options: wiring.RunOptions,
        notifier: Notifier | None = None,
        terminal: TerminalLine | None = None,
        reloader: Callable[[], Config] | None = None,
        verbose: bool = False,
    ) -> None:
        self.config = config
        self.options = options
        self.terminal = terminal  # --foreground on a TTY: the live progress line
        self.reloader = reloader  # SIGHUP: how to read the configuration again
        self.verbose = verbose
        self.state = RunState()
        self.metrics = Metrics(self.state)
        self.notifier = notifier or Notifier()
        self.envelope = wiring.build_envelope(config)
        self.sink = wiring.build_sink(config, options, self.envelope, self.metrics, self.state)
        # One tailer per audit log (source.paths), sharing one spool.
        self.paths = expand(config.source.paths)
        several = len(config.source.paths) > 1 or len(self.paths) > 1
        self.source_events = [SourceObserver(self.metrics, str(path)) for path in self.paths]
        spool = wiring.build_spool(config, options)
        self.tailers = [
            wiring.build_tailer(config, events, path, spool, several) for path, events in zip(self.paths, self.source_events)
        ]
        self.several = several
        self.stopping = asyncio.Event()
        self.pipeline: Pipeline | None = None  # built once the checkpoint is loaded

    # -- signals -------------------------------------------------------------------------------

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
            log.info("stopping: no more reading; in-flight requests get %.1f s", self.config.shutdown.grace_period)
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
        apply_log_settings(None if self.options.foreground else config.log.format, config.log.level, self.verbose)
        if self.pipeline is not None:
            for lane in self.pipeline.lanes:
                lane.builder.limits = wiring.batch_limits(config)
            self.pipeline.retry = config.retry
        if isinstance(self.sink, Exporter):
            self.sink.settings = wiring.build_export_settings(config)
        (log.warning if plan.needs_restart else log.info)("SIGHUP: configuration reloaded: %s", plan.describe())

    # -- start-up, the run, shutdown -----------------------------------------------------------

    async def _run(self) -> int:
        if not self.paths:
            raise FatalError(f"source.paths: no file matches {', '.join(self.config.source.paths)}")
        checkpoint = self._load_checkpoint()
        self.state.delivered_before = checkpoint.delivered_spans
        self.state.chain_breaks_before = checkpoint.chain_breaks
        keeper = wiring.build_keeper(self.config, self.options, checkpoint, self.metrics, self.state)
        rows = RowObserver(self.metrics, self.state)
        lanes = []
        for tailer, events in zip(self.tailers, self.source_events):
            events.keeper = keeper
            source = checkpoint.source(events.path)
            await tailer.start(None if source.says_nothing else source, self.config.source.start_at)
            position, gap = tailer.start_position(source.position)
            keeper.started(events.path, position, gap, tailer)
            mapper = wiring.build_mapper(self.config, position, rows, events.path if self.several else None)
            tailer.queue.links = mapper.links
            builder = BatchBuilder(self.envelope, wiring.batch_limits(self.config))
            lanes.append(Lane(events.path, tailer, mapper, builder, breaks_before=source.chain_breaks))
            if tailer.current is None:
                log.info("waiting for %s to appear", events.path)
        pipeline = self.pipeline = Pipeline(
            lanes, self.sink, keeper, self.config.retry, self.config.export.max_in_flight, self.state
        )
        self.state.file_reachable = any(t.current is not None for t in self.tailers)
        await self.sink.start()
        health = await self._start_health()

        workers = [
            asyncio.create_task(pipeline.export_worker(), name=f"export-{i}") for i in range(self.config.export.max_in_flight)
        ]
        housekeeping = [
            asyncio.create_task(keeper.run(), name="checkpoint"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        if self.terminal is not None:
            reporter = ProgressReporter(self.terminal, self._progress)
            housekeeping.append(asyncio.create_task(reporter.run(), name="progress"))
        reader = asyncio.create_task(pipeline.read_loop(self.stopping, self.options.once), name="reader")
        self.notifier.ready(self._status_line())
        log.info(
            "following %s -> %s (checkpoint %s)",
            ", ".join(str(p) for p in self.paths),
            "stdout (dry run)" if self.options.dry_run else mask_url(self.config.export.endpoint),
            self.config.checkpoint.path,
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
            # Ordered shutdown: stop reading, let in-flight requests finish (grace period), stop
            # the workers, write the final checkpoint, close the sink, the files, the listener.
            self.notifier.stopping()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await pipeline.drain_in_flight(self.config.shutdown.grace_period)
            for task in workers + housekeeping:
                task.cancel()
            await asyncio.gather(*workers, *housekeeping, return_exceptions=True)
            await keeper.flush()
            await self.sink.aclose()
            final_status = self._status_line()
            for tailer in self.tailers:
                await tailer.close()
            if health is not None:
                await health.aclose()
            log.info("stopped: %s", final_status)
        return exit_code

    async def _start_health(self) -> HealthServer | None:
        listen = self.config.health.listen
        if not listen or self.options.dry_run:
            return None
        host, port = listen
        health = HealthServer(host, port, self.state, self.metrics, self.config.health.failing_after, self._refresh_gauges)
        try:
            await health.start()
        except OSError as exc:
            raise FatalError(f"cannot listen on {host}:{port} for health checks: {exc.strerror or exc}") from exc
        return health

    async def _run_once(self, reader: asyncio.Task[None]) -> int:
        assert self.pipeline is not None
        pipeline, deadline = self.pipeline, self.options.deadline

        async def finished() -> None:
            await reader
            await pipeline.wait_all_settled()

        work = asyncio.create_task(finished())
        stop_wait = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait({work, stop_wait}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if work in done:
            work.result()
            if any(t.current is not None and t.current.splitter.pending_bytes for t in self.tailers):
                log.warning("the last line has no newline yet; it is held for the next run")
            log.info("--once: everything up to the end of the file is settled")
            return EXIT_OK
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        if self.stopping.is_set():
            return EXIT_OK
        log.error("--once: deadline of %.1f s passed with %d batches not delivered", deadline or 0, pipeline.unsettled)
        return EXIT_DEADLINE

    def _load_checkpoint(self) -> Checkpoint:
        store = CheckpointStore(self.config.checkpoint.path)
        if not self.options.dry_run:
            try:
                store.ensure_writable()
            except (CheckpointError, OSError) as exc:
                raise FatalError(str(exc)) from exc
        try:
            checkpoint = store.load()
        except NewerCheckpointError as exc:
            raise FatalError(f"{self.config.checkpoint.path}: {exc}; upgrade audit-otlp or move the file away") from exc
        path = str(self.paths[0]) if self.paths else ""
        if checkpoint is not None and len(self.paths) == 1 and path not in checkpoint.sources:
            log.warning(
                "the checkpoint was for %s, now following %s: matching by file identity and content",
                ", ".join(checkpoint.sources),
                path,
            )
        if checkpoint is None:
            checkpoint = Checkpoint({str(p): Checkpoint.empty(str(p)).source(str(p)) for p in self.paths})
        elif len(self.paths) == 1:
            checkpoint = checkpoint.keyed_for(path)
        self.state.checkpoint_loaded = True
        return checkpoint

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
        backlog = self.pipeline.backlog_bytes() if self.pipeline is not None else sum(t.backlog_bytes() for t in self.tailers)
        self.state.backlog_bytes = backlog
        self.metrics.backlog_bytes.set(backlog)

    def _progress(self) -> Progress:
        self._refresh_gauges()
        assert self.pipeline is not None
        return Progress(self.pipeline.settled_spans, self.pipeline.settled_bytes, self.state.backlog_bytes)

    def _status_line(self) -> str:
        self._refresh_gauges()
        missing = [str(t.path) for t in self.tailers if t.current is None and not t.draining]
        waiting = f"waiting for {', '.join(missing)}; " if missing else ""
        in_flight = self.pipeline.unsettled if self.pipeline is not None else 0
        return (
            f"{waiting}delivered {self.state.delivered_spans} spans of {self.state.rows_read} rows read, "
            f"backlog {self.state.backlog_bytes} bytes, "
            f"{in_flight} batches in flight"
            + (f", last error: {self.state.last_error}" if self.state.failing_since is not None else "")
        )


def run_daemon(
    config: Config,
    options: wiring.RunOptions,
    runner: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run,
    terminal: TerminalLine | None = None,
    reloader: Callable[[], Config] | None = None,
    verbose: bool = False,
) -> int:
    daemon = Daemon(config, options, terminal=terminal, reloader=reloader, verbose=verbose)
    return runner(daemon.run())
