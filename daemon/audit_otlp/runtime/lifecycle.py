"""One daemon process from start to exit: load the checkpoint, start the stages in order, handle
signals (stop, SIGHUP reload), keep the heartbeat, and shut down in order (docs/design.md,
"Start-up and shutdown"). What runs in between is `pipeline.Pipeline`; what is built from the
configuration is `wiring`."""

from __future__ import annotations

import asyncio
import glob
import logging
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar

from audit_otlp.config import Config, mask_url
from audit_otlp.delivery.policy import Exporter
from audit_otlp.delivery.sink import DryRunSink
from audit_otlp.runtime import wiring
from audit_otlp.runtime.events import RowObserver, SourceObserver
from audit_otlp.runtime.exits import EXIT_DEADLINE, EXIT_OK, EXIT_OUTPUT_CLOSED, FatalError
from audit_otlp.runtime.foreground import ForegroundView
from audit_otlp.runtime.logs import apply_log_settings, counted
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.pipeline import Pipeline
from audit_otlp.runtime.progress import TerminalLine
from audit_otlp.runtime.reload import ReloadPlan, reload_config
from audit_otlp.runtime.reporting import Reporting
from audit_otlp.runtime.runstate import RunState
from audit_otlp.runtime.sdnotify import Notifier
from audit_otlp.source.sources import expand, several
from audit_otlp.state.keeper import CheckpointKeeper

log = logging.getLogger("audit_otlp")


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
        self.encoding = wiring.build_encoding(config, options)
        self.envelope = self.encoding.envelope
        self.sink = wiring.build_sink(config, options, self.envelope, self.metrics, self.state)
        # One tailer per audit log (source.paths), sharing one spool. With a glob, the files it
        # matches later are followed too (`_rescan`), so each span names its source from the start.
        self.paths = expand(config.source.paths)
        self.globbing = any(glob.has_magic(p) for p in config.source.paths)
        self.several = several(config.source.paths, self.paths)
        self.source_events = [SourceObserver(self.metrics, str(path)) for path in self.paths]
        self.spool = wiring.build_spool(config, options)
        self.tailers = [
            wiring.build_tailer(config, events, path, self.spool, self.several)
            for path, events in zip(self.paths, self.source_events, strict=True)
        ]
        self.stopping = asyncio.Event()
        self.stop_now = asyncio.Event()  # a second SIGINT/SIGTERM: no grace period
        self.output_closed = False  # --dry-run: the reader of stdout went away
        if isinstance(self.sink, DryRunSink):
            self.sink.on_output_closed = self._output_closed
        self.pipeline: Pipeline | None = None  # built once the checkpoint is loaded
        self.report = Reporting(self.tailers, self.state, self.metrics, lambda: self.pipeline)

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
            state = self.state
            log.info(
                "stopping: no more reading; on the wire: %s; waiting to retry: %s; a second signal stops at once",
                f"{counted(state.requests_on_wire, 'request')} (up to {self.config.shutdown.grace_period:g} s to be answered)"
                if state.requests_on_wire
                else "none",
                f"{state.requests_retrying} (abandoned at once)" if state.requests_retrying else "none",
            )
            self.stopping.set()
        elif not self.stop_now.is_set():
            self.stop_now.set()

    def _output_closed(self) -> None:
        self.output_closed = True
        self.request_stop()

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
        checkpoint = wiring.load_checkpoint(self.config, self.options, self.paths)
        self.state.checkpoint_loaded = True
        self.state.delivered_before = checkpoint.delivered_spans
        self.state.chain_breaks_before = checkpoint.chain_breaks
        keeper = wiring.build_keeper(self.config, self.options, checkpoint, self.metrics, self.state)
        keeper.record_endpoint(mask_url(self.config.export.endpoint))
        rows = RowObserver(self.metrics, self.state)
        lanes = await wiring.open_lanes(
            self.config, self.tailers, self.source_events, checkpoint, keeper, rows, self.several, self.encoding
        )
        for lane in lanes:
            if lane.tailer.current is None:
                log.info("waiting for %s to appear", lane.path)
        pipeline = self.pipeline = Pipeline(
            lanes,
            self.sink,
            keeper,
            self.config.retry,
            self.config.export.max_in_flight,
            self.state,
            helper_min_backlog=self.config.mapping.helper_min_backlog,
        )
        self.state.file_reachable = any(t.current is not None for t in self.tailers)
        await self.sink.start()
        health = await wiring.start_health(self.config, self.options, self.state, self.metrics, self.report.refresh_gauges)

        workers = [
            asyncio.create_task(pipeline.export_worker(), name=f"export-{i}") for i in range(self.config.export.max_in_flight)
        ]
        housekeeping = [
            asyncio.create_task(keeper.run(), name="checkpoint"),
            asyncio.create_task(self.report.heartbeat(self.notifier), name="heartbeat"),
        ]
        if self.terminal is not None:
            view = ForegroundView(self.terminal, self.config, self.state, pipeline, keeper, self.report.refresh_gauges)
            housekeeping.append(asyncio.create_task(view.run(), name="foreground"))
        reader = asyncio.create_task(pipeline.read_loop(self.stopping, self.options.once), name="reader")
        rescan = self.config.source.rescan_interval
        if self.globbing and rescan is not None and not self.options.once:
            housekeeping.append(asyncio.create_task(self._rescan(pipeline, keeper, rows, rescan), name="rescan"))
        self.notifier.ready(self.report.status_line())
        log.info(
            "following %s -> %s (checkpoint %s)",
            ", ".join(str(p) for p in self.paths),
            "stdout (dry run)" if self.options.dry_run else mask_url(self.config.export.endpoint),
            self.config.checkpoint.path,
        )
        if self.config.chain.verify:
            log.info("chain key: %s", self.config.chain_key_source if self.config.chain_key else "none (plain SHA-256)")
            if self.config.chain_key_problem:
                log.warning("%s", self.config.chain_key_problem)
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
            await pipeline.drain_in_flight(self.config.shutdown.grace_period, self.stop_now)
            for task in workers + housekeeping:
                task.cancel()
            await asyncio.gather(*workers, *housekeeping, return_exceptions=True)
            await keeper.flush()
            await self.sink.aclose()
            final_status = self.report.status_line()
            for tailer in self.tailers:
                await tailer.close()
            if health is not None:
                await health.aclose()
            log.info("stopped: %s", final_status)
        return EXIT_OUTPUT_CLOSED if self.output_closed else exit_code

    async def _rescan(self, pipeline: Pipeline, keeper: CheckpointKeeper, rows: RowObserver, interval: float) -> None:
        """Match source.paths again every `interval`: a file a glob matches now and did not before
        is followed from its beginning (a new file's rows were all written after the daemon
        started), or from its checkpoint entry when an earlier run followed it. A file that goes
        away keeps its lane: its tailer waits for it, as for a plain path."""
        while True:
            await asyncio.sleep(interval)
            try:
                found = await asyncio.to_thread(expand, self.config.source.paths)
            except OSError as exc:
                log.warning("cannot match source.paths again: %s", exc)
                continue
            known = set(self.paths)
            for path in found:
                if path in known:
                    continue
                try:
                    await self._follow(path, pipeline, keeper, rows)
                except OSError as exc:  # unreadable now: tried again at the next rescan
                    log.warning("cannot follow %s (it matches source.paths): %s", path, exc)

    async def _follow(self, path: Path, pipeline: Pipeline, keeper: CheckpointKeeper, rows: RowObserver) -> None:
        events = SourceObserver(self.metrics, str(path))
        tailer = wiring.build_tailer(self.config, events, path, self.spool, self.several)
        try:
            (lane,) = await wiring.open_lanes(
                self.config, [tailer], [events], keeper.current, keeper, rows, self.several, self.encoding, start_at="beginning"
            )
        except BaseException:
            await tailer.close()
            raise
        self.paths.append(path)
        self.source_events.append(events)
        self.tailers.append(tailer)
        pipeline.add_lane(lane)
        log.info("following %s too: it matches source.paths now", path)

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
        log.error("--once: deadline of %.1f s passed with %s not delivered", deadline or 0, counted(pipeline.unsettled, "batch"))
        return EXIT_DEADLINE


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
