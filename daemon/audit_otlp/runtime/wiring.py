"""Typed configuration -> the daemon's components: the only place that knows which settings go
to which stage (the request envelope, the sink, the tailer, the checkpoint keeper, the mapper)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from audit_otlp.config import Config
from audit_otlp.delivery.batching import BatchBuilder, BatchLimits
from audit_otlp.delivery.encoding import JSON, Encoding, RequestEnvelope, encoding_for
from audit_otlp.delivery.policy import Exporter
from audit_otlp.delivery.records import DurableLog
from audit_otlp.delivery.settings import ExportSettings
from audit_otlp.delivery.sink import DryRunSink, Sink
from audit_otlp.mapping.chain import ChainHasher, ChainState
from audit_otlp.mapping.envelope import Envelope, make_envelope, resource_attributes
from audit_otlp.mapping.ids import IdentityWindow, MappingOptions
from audit_otlp.mapping.rows import RowEvents, RowMapper
from audit_otlp.runtime.events import SourceObserver
from audit_otlp.runtime.exits import FatalError
from audit_otlp.runtime.health import HealthServer
from audit_otlp.runtime.lane import Lane
from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.runstate import RunState
from audit_otlp.source.events import SourceEvents
from audit_otlp.source.recent import RECENT_LINES
from audit_otlp.source.sources import rotated_glob_for
from audit_otlp.source.spool import Spool
from audit_otlp.source.tailer import Tailer
from audit_otlp.state.checkpoint import RECENT_DIGESTS, Checkpoint, Cursor, NewerCheckpointError
from audit_otlp.state.keeper import CheckpointKeeper
from audit_otlp.state.store import CheckpointError, CheckpointStore

log = logging.getLogger("audit_otlp")


@dataclass(frozen=True)
class RunOptions:
    once: bool = False
    deadline: float | None = None
    dry_run: bool = False
    foreground: bool = False


def build_envelope(config: Config) -> Envelope:
    # The OpenTelemetry rule: OTEL_SERVICE_NAME (or our own key) wins; otherwise a service.name
    # given in OTEL_RESOURCE_ATTRIBUTES applies; the embedded default comes last.
    resource = config.resource
    service_name = resource.service_name
    if config.origin["resource.service_name"] == "default":
        service_name = resource.attributes.get("service.name", service_name)
    return make_envelope(resource_attributes(service_name, resource.attributes, config.mapping.dd_llmobs_enabled))


def build_encoding(config: Config, options: RunOptions) -> Encoding:
    """export.protocol's span encoder and envelope; --dry-run prints OTLP/JSON whatever it is."""
    return encoding_for(JSON if options.dry_run else config.export.protocol, build_envelope(config))


def build_export_settings(config: Config) -> ExportSettings:
    export, retry = config.export, config.retry
    return ExportSettings(
        endpoint=export.endpoint,
        headers=export.headers,
        vendor_headers=config.vendor.headers_for(export.endpoint) if config.vendor else {},
        timeout=export.timeout,
        compression=export.compression,
        protocol=export.protocol,
        max_in_flight=export.max_in_flight,
        initial_backoff=retry.initial_backoff,
        max_backoff=retry.max_backoff,
        auth_backoff=retry.auth_backoff,
        max_request_bytes=export.max_request_bytes,
        certificate=str(export.certificate) if export.certificate else None,
        client_certificate=str(export.client_certificate) if export.client_certificate else None,
        client_key=str(export.client_key) if export.client_key else None,
        insecure=export.insecure,
    )


def build_sink(config: Config, options: RunOptions, envelope: RequestEnvelope, metrics: Metrics, state: RunState) -> Sink:
    if options.dry_run:
        return DryRunSink(build_envelope(config))
    receipts = config.delivery.receipts_path
    return Exporter(
        build_export_settings(config),
        envelope,
        metrics,
        state,
        DurableLog(config.dead_letter.path),
        DurableLog(receipts) if receipts else None,
    )


def spool_directory(config: Config) -> Path:
    """Beside the checkpoint, one per checkpoint (daemons sharing a state directory keep apart)."""
    checkpoint = config.checkpoint.path
    return checkpoint.with_name(checkpoint.name + ".spool")


def build_spool(config: Config, options: RunOptions) -> Spool | None:
    """One spool for every source (its bound is for them all); none for a dry run. A spool path
    taken by something else than a directory is fatal (exit 3): no vanished version could be kept."""
    if options.dry_run:
        return None
    directory = spool_directory(config)
    if os.path.lexists(directory) and not directory.is_dir():
        raise FatalError(
            f"the spool directory {directory} (beside checkpoint.path) exists and is not a directory: "
            "rows of a version that vanishes before delivery could not be kept; move it away"
        )
    return Spool(directory, config.source.spool_max_bytes)


def build_tailer(config: Config, events: SourceEvents, path: Path, spool: Spool | None, several: bool) -> Tailer:
    source = config.source
    # The recent-lines window must reach back past every line read but not yet delivered, plus
    # the lines the checkpoint keeps.
    unsettled = (config.export.max_in_flight + 2) * config.batch.max_spans
    return Tailer(
        path,
        max_line_bytes=source.max_line_bytes,
        poll_interval=source.poll_interval,
        rotated_glob=rotated_glob_for(path, several, source.rotated_glob),
        events=events,
        spool=spool,
        recent_limit=max(RECENT_LINES, RECENT_DIGESTS + unsettled),
    )


async def open_lanes(
    config: Config,
    tailers: list[Tailer],
    observers: list[SourceObserver],
    checkpoint: Checkpoint,
    keeper: CheckpointKeeper,
    rows: RowEvents,
    several: bool,
    encoding: Encoding,
    start_at: str | None = None,
) -> list[Lane]:
    """Start each source's tailer where its checkpoint entry says (a gap found there is recorded
    at once), else at `start_at` (default source.start_at), and give it its mapping stage (its
    own chain) and its batch."""
    lanes = []
    for tailer, events in zip(tailers, observers, strict=True):
        events.keeper = keeper
        source = checkpoint.source(events.path)
        await tailer.start(None if source.says_nothing else source, start_at or config.source.start_at)
        position, gap = tailer.start_position(source.position)
        keeper.started(events.path, position, gap, tailer)
        mapper = build_mapper(config, position, rows, encoding, events.path if several else None)
        builder = BatchBuilder(encoding.envelope, batch_limits(config))
        lanes.append(
            Lane(
                events.path,
                tailer,
                mapper,
                builder,
                breaks_before=source.chain_breaks,
                encoding=encoding,
                span_source=events.path if several else None,
            )
        )
    return lanes


def batch_limits(config: Config) -> BatchLimits:
    return BatchLimits(config.batch.max_spans, config.batch.max_bytes, config.batch.max_wait)


def build_keeper(
    config: Config, options: RunOptions, checkpoint: Checkpoint, metrics: Metrics, state: RunState
) -> CheckpointKeeper:
    store = CheckpointStore(config.checkpoint.path)
    return CheckpointKeeper(store, checkpoint, config.checkpoint.interval, metrics, state, enabled=not options.dry_run)


def build_mapper(config: Config, position: Cursor, events: RowEvents, encoding: Encoding, source: str | None = None) -> RowMapper:
    """The mapping stage of one source, its chain and identity window as they stood at `position`;
    `source` (with several audit logs) names it on every span."""
    hasher = ChainHasher(config.chain_key) if config.chain.verify else None
    chain = ChainState.resumed(position.chain_last_hash, position.chain_recent, position.chain_seen or None)
    identity = IdentityWindow(bytes.fromhex(d) for d in position.recent_digests)
    return RowMapper(
        MappingOptions(config.mapping.trace_id_from),
        hasher,
        chain,
        events,
        identity=identity,
        encode=encoding.encode_span,
        source=source,
    )


def load_checkpoint(config: Config, options: RunOptions, paths: list[Path]) -> Checkpoint:
    """The saved positions, or fresh ones; a checkpoint directory that cannot be written is fatal
    (exit 3) unless nothing will be written (--dry-run), and so is a newer format than we read."""
    store = CheckpointStore(config.checkpoint.path)
    if not options.dry_run:
        try:
            store.ensure_writable()
        except (CheckpointError, OSError) as exc:
            raise FatalError(str(exc)) from exc
    try:
        checkpoint = store.load()
    except NewerCheckpointError as exc:
        raise FatalError(f"{config.checkpoint.path}: {exc}; upgrade audit-otlp or move the file away") from exc
    path = str(paths[0]) if paths else ""
    if checkpoint is not None and len(paths) == 1 and path not in checkpoint.sources:
        log.warning(
            "the checkpoint was for %s, now following %s: matching by file identity and content",
            ", ".join(checkpoint.sources),
            path,
        )
    if checkpoint is None:
        return Checkpoint({str(p): Checkpoint.empty(str(p)).source(str(p)) for p in paths})
    return checkpoint.keyed_for(path) if len(paths) == 1 else checkpoint


async def start_health(
    config: Config, options: RunOptions, state: RunState, metrics: Metrics, refresh: Callable[[], None]
) -> HealthServer | None:
    """The /healthz, /readyz and /metrics listener, when configured (never for --dry-run)."""
    listen = config.health.listen
    if not listen or options.dry_run:
        return None
    host, port = listen
    health = HealthServer(host, port, state, metrics, config.health.failing_after, refresh)
    try:
        await health.start()
    except OSError as exc:
        raise FatalError(f"cannot listen on {host}:{port} for health checks: {exc.strerror or exc}") from exc
    return health
