"""From a registration request to a model version ready to start: the archive fetched,
opened and checked, its requirements installed, its pool and batcher built."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from modelserve.archive import Archive, ArchiveError, open_archive
from modelserve.archive.fetch import resolve_archive
from modelserve.archive.manifest import check_model_name, check_model_version
from modelserve.archive.reader import Limits, check_member
from modelserve.archive.requirements import RequirementsError, install_requirements
from modelserve.config import ModelConfig, Settings
from modelserve.errors import BadRequestError
from modelserve.server.engine.batching import Batcher
from modelserve.server.engine.continuous import ContinuousBatcher
from modelserve.server.engine.jobs import Job
from modelserve.server.engine.pool import WorkerPool
from modelserve.server.engine.registration import RegisterRequest
from modelserve.server.engine.registry import ModelVersion
from modelserve.server.engine.sequences import SequenceBatcher, SequenceHeaders
from modelserve.server.engine.worker_spec import WorkerSpec
from modelserve.server.engine.zygote import Zygote
from modelserve.server.observability.metrics import ServerMetrics

log = logging.getLogger("modelserve.dataplane")


class ModelParts(NamedTuple):
    """What a version is built from."""

    name: str
    version: str
    req: RegisterRequest
    archive: Archive
    config: ModelConfig
    deps: tuple[str, ...]


async def open_model(settings: Settings, req: RegisterRequest,
                     default_workers: int | None = None, opened: Archive | None = None,
                     ) -> tuple[Archive, str, str, ModelConfig]:
    """Check the request, fetch and open its archive: (archive, name, version, config);
    ``default_workers``: the workers to start when neither the request nor the archive's
    model-config.yaml names them (None: default_workers_per_model); ``opened``: the archive,
    already open (a workflow's function node: its .war folder), instead of ``req.url``."""
    if req.handler is not None:
        try:
            check_member(req.handler.split(":")[0])
        except ArchiveError:
            raise BadRequestError(f"handler {req.handler!r} must be a built-in name or a "
                                  "file inside the archive") from None
    if req.runtime is not None and req.runtime not in ("python", "python3"):
        raise BadRequestError(f"Invalid RuntimeType value: {req.runtime} "
                              "(modelserve runs python handlers)")
    s = settings
    archive = opened or await _fetch(s, req.url)
    name = req.model_name or archive.name
    version = archive.version
    try:  # an archive must not name itself "a/b" (then never found again) or "../x"
        check_model_name(name)
        check_model_version(version)
    except ValueError as exc:
        raise BadRequestError(f"{exc} (in {req.url})") from None
    try:
        config = ModelConfig.resolve(
            s, archive.model_yaml_config, {
                "min_workers": req.initial_workers, "batch_size": req.batch_size,
                "max_batch_delay": req.max_batch_delay,
                "response_timeout": req.response_timeout,
                "startup_timeout": req.startup_timeout,
                # initial_workers=0: no worker until a scale call (TorchServe's), not one
                # started for the first request (autoscale's minWorkers 0)
                "max_workers": 0 if req.initial_workers == 0 else None,
            },
            configured=s.models.get(name, {}).get(version, {}),
            default_workers=default_workers,
        )
    except ValueError as exc:
        raise BadRequestError(f"invalid model configuration: {exc}") from None
    return archive, name, version, config


async def _fetch(s: Settings, url: str) -> Archive:
    path = await asyncio.to_thread(resolve_archive, url, s.model_store, s.workdir,
                                   s.allowed_urls)
    try:
        return await asyncio.to_thread(
            open_archive, path, s.workdir, Limits(s.max_archive_size, s.max_archive_ratio))
    except ArchiveError as exc:
        raise BadRequestError(f"invalid model archive {url}: {exc}") from None


async def requirement_paths(settings: Settings, archive: Archive) -> tuple[str, ...]:
    """Install the archive's requirements when enabled; the paths its workers import from."""
    req_file = archive.manifest.model.requirements_file
    if not req_file:
        return ()
    if not settings.install_py_dep_per_model:
        log.warning("%s has a requirements file that is not installed "
                    "(install_py_dep_per_model is false)", archive.name)
        return ()
    try:
        target = await asyncio.to_thread(install_requirements, archive.model_dir / req_file,
                                         settings.workdir)
    except RequirementsError as exc:
        raise BadRequestError(str(exc)) from None
    return (str(target),)


def _batcher(name: str, version: str, pool: WorkerPool, config: ModelConfig,
             headers: SequenceHeaders) -> Batcher:
    """The version's batcher: by sequence for a stateful model, step by step for continuous
    batching, else one queue."""
    if config.sequenced:
        return SequenceBatcher(name, pool, config.batch_size, config.max_batch_delay,
                               config.job_queue_size, config.response_timeout,
                               max_idle_ms=config.sequence_max_idle_ms,
                               timeout_ms=config.sequence_timeout_ms,
                               max_sequences=config.max_sequences,
                               max_queued=config.max_sequence_job_queue_size,
                               headers=headers)
    if config.continuous_batching:
        return ContinuousBatcher(name, pool, config.batch_size, config.max_batch_delay,
                                 config.job_queue_size, queue_timeout_s=config.response_timeout)
    if config.sequence_batching:  # TorchServe then refuses every request (no job groups)
        log.warning("%s %s: sequenceBatching needs a positive sequenceMaxIdleMSec; its "
                    "requests are batched without sequences", name, version)
    return Batcher(name, pool, config.batch_size, config.max_batch_delay,
                   config.job_queue_size, queue_timeout_s=config.response_timeout)


def build_version(parts: ModelParts, server_metrics: ServerMetrics, threads: Callable[[int], int],
                  zygote: Zygote | None, settings: Settings,
                  loaded_at_startup: bool) -> ModelVersion:
    """The version's worker pool and batcher, wired to each other and to its metrics; no
    worker starts yet. ``threads`` gives the torch threads a new worker gets."""
    name, version, req, archive, config, deps = parts
    headers = SequenceHeaders.of(settings)
    spec = WorkerSpec(
        model_name=name,
        model_version=version,
        model_dir=str(archive.model_dir.resolve()),
        handler=req.handler or archive.manifest.model.handler,
        extra_paths=deps,
        manifest=archive.manifest.to_json_dict(),
        model_yaml_config=archive.model_yaml_config,
        batch_size=config.batch_size,
        device_type=config.device_type or "auto",
        startup_timeout=config.startup_timeout,
        response_timeout=config.response_timeout,
        pipeline_depth=settings.pipeline_depth,
        timeout_status=settings.timeout_status,
        metrics_config=str(settings.metrics_config.resolve()) if settings.metrics_config
        else None,
        batch_threads=0 if config.batch_threads == "auto" else config.batch_threads,
        envelope=settings.service_envelope,
        lifecycle_log=settings.lifecycle_log,
        extra_env=tuple(headers.worker_env().items()),
    )
    metrics = server_metrics.for_version(name, version)

    def on_batch_done(jobs: list[Job], handler_ms: float, custom: list[Any],
                      done_at: float) -> None:
        metrics.executions += 1
        metrics.batch_size.observe(len(jobs))
        metrics.handler_time.observe(handler_ms / 1000.0)
        if custom:
            server_metrics.custom.record(custom)
        if metrics.log is not None:  # metrics_mode log: TorchServe's metric lines
            round_trip_ms = (done_at - jobs[0].dispatched) * 1000 if jobs else 0.0
            metrics.log.batch(name, [job.request_id for job in jobs], handler_ms,
                              round_trip_ms, custom)

    def on_change() -> None:
        batcher.wake()

    # metric lines in the log (TorchServe's metrics_mode log): written before the answers go
    pool = WorkerPool(spec, threads, on_change, on_batch_done, zygote,
                      batch_done_first=metrics.log is not None and metrics.log.writes_lines)
    pool.on_ready = metrics.worker_loaded
    batcher = _batcher(name, version, pool, config, headers)
    # a dead worker's requests are tried again elsewhere; a continuous batch's steps are not
    # (ContinuousBatcher queues again those that never had an answer)
    pool.requeue = None if isinstance(batcher, ContinuousBatcher) else batcher.requeue

    def limit_batch(limit: int) -> None:  # describe shows the batch size actually served
        if limit < batcher.batch_size:
            log.warning("%s %s: its model takes batches of at most %d; serving it with "
                        "batch size %d instead of %d", name, version, limit, limit,
                        batcher.batch_size)
            batcher.batch_size = limit  # config keeps what was asked (snapshots save it)

    pool.limit_batch = limit_batch
    return ModelVersion(name, version, req.url, archive, config, pool, batcher, metrics,
                        loaded_at_startup)
