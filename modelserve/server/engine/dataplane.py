"""The transport-neutral core: every API (TorchServe REST, later OIP v2 and gRPC) calls this.

It owns the registry and turns management calls into worker pools and batchers, and
inference calls into jobs on a batcher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from modelserve import jsonc
from modelserve.archive import Archive
from modelserve.config import Settings
from modelserve.errors import (
    BadRequestError,
    ConflictError,
    MethodNotAllowedError,
    ModelNotFoundError,
    ModelServeError,
    ServiceUnavailableError,
)
from modelserve.server.engine.autoscale import Autoscaler
from modelserve.server.engine.jobs import CLIENT_GONE, Job, Result
from modelserve.server.engine.loading import (
    ModelParts,
    build_version,
    open_model,
    requirement_paths,
)
from modelserve.server.engine.pool import cpu_count
from modelserve.server.engine.registration import RegisterRequest
from modelserve.server.engine.registry import ModelRegistry, ModelVersion
from modelserve.server.engine.sequences import SequenceHeaders
from modelserve.server.engine.snapshot import Snapshot
from modelserve.server.engine.startup import save_snapshots, startup_requests
from modelserve.server.engine.startup_loader import StartupModels
from modelserve.server.engine.streams import Stream
from modelserve.server.engine.ts_snapshot import TsSnapshots
from modelserve.server.engine.zygote import Launched, Zygote
from modelserve.server.observability.metrics import ServerMetrics

log = logging.getLogger("modelserve.dataplane")

def _observe(mv: ModelVersion, version: str | None, job: Job) -> None:
    """A streamed request's latency: arrival to the consumer closing the stream."""
    now = time.perf_counter()
    mv.metrics.observe_request(version, now - job.arrival, (job.dispatched or now) - job.arrival)


def _start_failed(exc: BaseException, what: str) -> ModelServeError:
    """Workers that could not start: a 500, but for the client's own mistake (a handler the
    archive does not have), which keeps its 4xx (TorchServe answers 500 to both)."""
    if isinstance(exc, ModelServeError):
        status, kind = (exc.status, exc.type) if exc.status < 500 else (500, None)
        return ModelServeError(f"Failed to start workers for {what}: {exc.message}",
                               status=status, type=kind)
    return ModelServeError(f"Failed to start workers for {what}: {exc!r}")


class DataPlane:
    def __init__(self, settings: Settings, metrics: ServerMetrics,
                 zygote: Launched | None = None) -> None:
        """``zygote``: one :func:`~modelserve.server.engine.zygote.launch` made already."""
        self.settings = settings
        self.metrics = metrics
        self.registry = ModelRegistry()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._background: set[asyncio.Task[Any]] = set()
        metrics.processes.versions = self.registry.all
        self.draining = False  # set at SIGTERM: readiness turns false, liveness stays true
        self.snapshot = Snapshot(settings.state_path) if settings.model_snapshot else None
        self.ts_snapshots = TsSnapshots.open(settings)  # TorchServe's logs/config/*.cfg
        self.sequence_id = SequenceHeaders.of(settings).id  # sequence batching's header
        self.zygote = (Zygote(settings.startup_timeout, zygote)
                       if settings.worker_start == "zygote" else None)
        self.startup = StartupModels(settings, self.registry, self._add, self._discard,
                                     self.save_state)  # the models named at start
        self.autoscaler = Autoscaler(settings.autoscale, self.registry.all,
                                     lambda name: self._locks[name].locked())

    # -- inference (hot path) ----------------------------------------------------------------
    async def infer(self, name: str, version: str | None, body: bytes, content_type: str,
                    headers: dict[str, str], request_id: str,
                    v2: dict[str, Any] | None = None) -> Result | Stream:
        """One request through the model's batcher; ``v2`` carries an OIP v2 request's
        tensors (then ``body`` is empty). The worker's answer: a Result, or a Stream when the
        handler streams it (the request's latency is then observed when the consumer closes
        the stream)."""
        return await self.infer_version(self.registry.get(name, version), version, body,
                                        content_type, headers, request_id, v2)

    async def infer_version(self, mv: ModelVersion, version: str | None, body: bytes,
                            content_type: str, headers: dict[str, str], request_id: str,
                            v2: dict[str, Any] | None = None,
                            timing: list[float] | None = None) -> Result | Stream:
        """``timing``, if given, receives (total, queued) seconds."""
        loop = asyncio.get_running_loop()
        job = Job(request_id, content_type, body, headers, loop.create_future(), v2=v2,
                  gone=CLIENT_GONE.get())
        mv.metrics.received(version)
        mv.batcher.submit(job)
        streamed = False
        try:
            result = await job.future
            if job.sequence and result.__class__ is Result \
                    and self.sequence_id not in result.headers:  # the id a client goes on with
                result = result._replace(headers={**result.headers,
                                                  self.sequence_id: job.sequence})
            if result.__class__ is Stream:
                streamed = True
                result.on_close(lambda: _observe(mv, version, job))  # type: ignore[union-attr]
            return result
        finally:
            if not streamed:
                now = time.perf_counter()
                queued = (job.dispatched or now) - job.arrival
                # recorded after the answer is written (this task writes it before the loop
                # runs the callback): histograms and metric lines never delay a response
                loop.call_soon(mv.metrics.observe_request, version, now - job.arrival, queued)
                if timing is not None:
                    timing[:] = (now - job.arrival, queued)

    async def infer_stream(self, name: str, version: str | None, body: bytes,
                           content_type: str, headers: dict[str, str], request_id: str,
                           v2: dict[str, Any] | None = None) -> AsyncIterator[Result]:
        """Transport-neutral streaming (gRPC ModelStreamInfer uses it): each chunk as a
        Result with the first chunk's status, content type and headers (and no tensors); a
        non-streamed answer is one Result (an OIP v2 one with its tensors). Raises the error
        that ends a stream after its first chunk; stopping early (``aclose()``, or cancelling
        the task that iterates) cancels the rest of the work in the worker."""
        result = await self.infer(name, version, body, content_type, headers, request_id, v2)
        if result.__class__ is not Stream:
            yield result  # type: ignore[misc]
            return
        stream: Stream = result  # type: ignore[assignment]
        try:
            async for chunk in stream:
                yield Result(stream.status, stream.content_type, chunk, stream.headers,
                             stream.batch_size)
        finally:
            stream.close()

    def is_healthy(self) -> bool:
        """TorchServe's /ping: every default version has its minimum of ready workers, and
        none is crash-looping; and every model named at start is loaded (startup_loader)."""
        if self.startup.blocking():
            return False
        for name in self.registry.names():
            if self.registry.get(name).pool.health != "Healthy":
                return False
        return True

    def is_ready(self) -> bool:
        """Server readiness: not draining, and every model healthy (see is_healthy)."""
        return not self.draining and self.is_healthy()

    def is_model_ready(self, name: str, version: str | None = None) -> bool:
        """A model version can take requests now: registered, not draining, not
        crash-looping, and at least one ready worker and its minimum of them."""
        if self.draining:
            return False
        try:
            mv = self.registry.get(name, version)
        except ModelServeError:
            return False
        pool = mv.pool
        # scaled to zero, a worker comes with the first request (autoscale): ready too
        waking = mv.config.min_workers == 0 and self.autoscaler.enabled(mv)
        return (pool.ready_count > 0 or waking) and pool.health == "Healthy"

    # -- management --------------------------------------------------------------------------
    def _threads(self, workers: int) -> int:
        """A new worker's torch threads when its version wants ``workers``: the cores shared
        among that version's workers, as TorchServe gives each worker every core. Other models'
        workers are not counted: a model served alone gets the machine (issue 19: one worker
        of each of two models had one thread of two cores), and models busy at once share the
        cores through the OS (idle OpenMP threads sleep, worker/process.py)."""
        if self.settings.threads_per_worker:
            return self.settings.threads_per_worker
        return max(1, cpu_count() // max(1, workers))

    async def register(self, req: RegisterRequest, loaded_at_startup: bool = False,
                       workflow: str | None = None, opened: Archive | None = None,
                       ) -> tuple[int, str]:
        """Register an archive; returns (HTTP status, message) as TorchServe words them.
        ``workflow``: a workflow registers it (enable_model_api does not apply, snapshots
        leave it out); ``opened``: its archive, already open (see ``open_model``)."""
        if workflow is None:
            self._check_model_api()
        mv = await self._add(req, loaded_at_startup, workflow, opened)
        try:
            return await self._start_workers(mv, req.synchronous)
        finally:
            self.save_state()

    def _check_model_api(self) -> None:
        """TorchServe's 405, word for word (its tests and clients match the body); the
        reason goes to the log."""
        if not self.settings.enable_model_api:
            log.warning("register/unregister refused: enable_model_api is false "
                        "(--enable-model-api turns it on)")
            raise MethodNotAllowedError(
                "Requested method is not allowed, please refer to API document.")

    async def _add(self, req: RegisterRequest, loaded_at_startup: bool,
                   workflow: str | None = None, opened: Archive | None = None) -> ModelVersion:
        """Open the archive and enter the version in the registry, without workers yet."""
        archive, name, version, config = await open_model(
            self.settings, req, None if loaded_at_startup else self.settings.registration_workers,
            opened)
        self._check_worker_count(config.min_workers, "minWorkers / initial_workers")
        deps = await requirement_paths(self.settings, archive)

        async with self._locks[name]:
            self.registry.check_new(name, version)
            mv = build_version(ModelParts(name, version, req, archive, config, deps),
                               self.metrics, self._threads, self.zygote,
                               self.settings, loaded_at_startup)
            mv.workflow = workflow
            self.registry.add(mv)
            self.autoscaler.attach(mv)
            mv.batcher.start()
        return mv

    async def _start_workers(self, mv: ModelVersion, synchronous: bool) -> tuple[int, str]:
        name, version, workers = mv.name, mv.version, mv.config.min_workers
        if workers == 0:
            return 200, (f'Model "{name}" Version: {version} registered with 0 initial workers. '
                         "Use scale workers API to add workers for the model.")
        if not synchronous:
            self._in_background(self._scale_or_log(mv, workers))
            return 202, "Processing worker updates..."
        try:
            await mv.pool.scale(workers)
        except Exception as exc:  # whatever it was, the version must not stay half-registered
            await self._discard(mv)
            if not isinstance(exc, ModelServeError):
                log.exception("starting workers for %s %s failed", name, version)
            raise _start_failed(exc, f"model {name} version: {version}") from None
        if not self.registry.holds(mv):
            raise ConflictError(f'Model "{name}" version {version} was unregistered while its '
                                "workers started")
        return 200, f'Model "{name}" Version: {version} registered with {workers} initial workers'

    def _check_worker_count(self, count: int, what: str) -> None:
        cap = self.settings.max_workers_per_model
        if count > cap:
            raise BadRequestError(f"{what} of {count} is over max_workers_per_model ({cap})")

    async def scale(self, name: str, version: str | None, min_worker: int,
                    max_worker: int | None, synchronous: bool) -> tuple[int, str]:
        # the bounds first, then the model (ApiUtils.updateModelWorkers' order)
        if max_worker is not None and max_worker < min_worker:
            raise BadRequestError("max_worker cannot be less than min_worker.")
        if min_worker < 0:
            raise BadRequestError("min_worker cannot be negative.")
        self.registry.get(name, version)
        self._check_worker_count(max(min_worker, max_worker or 0), "min_worker / max_worker")
        async with self._locks[name]:
            # looked up again: an unregister may have run while this call waited for the lock
            mv = self.registry.get(name, version)
            mv.config.min_workers = min_worker
            mv.config.max_workers = max(max_worker or min_worker, min_worker)
            self.save_state()
            if not synchronous:
                self._in_background(self._scale_or_log(mv, min_worker))
                return 202, "Processing worker updates..."
            try:
                await mv.pool.scale(min_worker)
            except ModelServeError as exc:
                raise _start_failed(exc, f"model {name}") from None
            mv.pool.retune()  # threads follow the pool's size
        suffix = f", version: {version}" if version else ""
        return 200, f"Workers scaled to {min_worker} for model: {name}{suffix}"

    async def unregister(self, name: str, version: str | None, workflow: bool = False) -> str:
        """``workflow``: a workflow unregisters its model (enable_model_api does not apply)."""
        if not workflow:
            self._check_model_api()
        async with self._locks[name]:
            mv = self.registry.remove(name, version)
        self.save_state()
        await self._discard(mv)
        return f'Model "{name}" unregistered'

    async def _discard(self, mv: ModelVersion, grace: float = 30.0) -> None:
        """Stop a version (unregistered, or its workers failed to start) and drop it from the
        registry if it is still there: by identity, so a newer registration of the same name
        and version made meanwhile stays, and keeps its metric series."""
        self.registry.discard(mv)
        await mv.batcher.close(ServiceUnavailableError(f'Model "{mv.name}" was unregistered'))
        await mv.pool.close(grace)
        if not self.registry.has(mv.name, mv.version):
            self.metrics.forget(mv.name, mv.version)

    def set_default(self, name: str, version: str) -> str:
        self.registry.set_default(name, version)
        self.save_state()
        return f'Default version successfully updated for model "{name}" to "{version}"'

    async def describe(self, name: str, version: str | None,
                       customized: bool = False) -> list[dict[str, Any]]:
        try:
            versions = (self.registry.versions(name) if version == "all"
                        else [self.registry.get(name, version)])
        except ModelNotFoundError as exc:
            raise self.startup.explain(exc, name) from None
        out = [mv.describe() for mv in versions]
        if customized:
            for mv, body in zip(versions, out):
                body["customizedMetadata"] = await self._customized(mv)
        return out

    async def _customized(self, mv: ModelVersion) -> Any:
        """The handler's ``describe_handle`` output, asked of a worker like TorchServe does."""
        result = await self.infer(mv.name, mv.version, b"", "", {"describe": "True"},
                                  "describe")
        if isinstance(result, Stream):  # describe_handle is not for streaming
            result.close()
            raise ModelServeError("the handler streamed its describe_handle answer")
        if result.status >= 400:
            raise ModelServeError.from_body(result.status, result.body)
        return jsonc.loads(result.body) if result.content_type == "application/json" \
            else result.body.decode(errors="replace")

    def list_models(self, limit: int, token: int, token_at_end: bool = False) -> dict[str, Any]:
        """A page of ``limit`` models from ``token`` on, sorted by name; ``nextPageToken`` when
        models follow it (``token_at_end``: also when the page ends at the last model, as
        TorchServe's ApiUtils.getModelList does)."""
        names = self.registry.names()
        page = names[token: token + limit]
        body: dict[str, Any] = {"models": [
            {"modelName": n, "modelUrl": self.registry.get(n).url} for n in page
        ]}
        end = token + limit
        if end < len(names) or (token_at_end and end == len(names)):
            body["nextPageToken"] = str(end)
        return body

    # -- lifecycle ---------------------------------------------------------------------------
    def _in_background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _scale_or_log(self, mv: ModelVersion, count: int) -> None:
        """An asynchronous registration or scale call's starts. A start that failed is retried
        with the restart backoff, as TorchServe's WorkerThread retries (requests get 503 at
        once meanwhile: Batcher._no_worker); one whose handler is not in the archive (400)
        never will load, so the version is left with no worker."""
        try:
            await mv.pool.scale(count)
            mv.pool.retune()  # threads follow the pool's size
        except Exception as exc:
            log.error("%s", mv.pool.start_failed_line(exc))
            if isinstance(exc, ModelServeError) and exc.status == 400:
                if not mv.pool.workers:  # none will come: requests get 503 at once
                    mv.pool.target = 0
            else:
                mv.pool.restore_later(str(exc))
            mv.batcher.wake()

    # -- state snapshot ----------------------------------------------------------------------
    def save_state(self, event: str = "snapshot") -> None:
        """Write the registry to the snapshots that are on, for TorchServe's ``event``
        (startup, snapshot after a change, shutdown); none but shutdown's while draining."""
        if not self.draining or event == "shutdown":
            save_snapshots(self.registry, self.snapshot, self.ts_snapshots, event,
                           self.startup.unsaved())

    async def load_startup_models(self) -> list[str]:
        """Register the snapshot's or the configured models; returns error messages (the
        others still load; transient failures are retried: engine/startup_loader.py)."""
        return await self.startup.load(startup_requests(self.settings, self.snapshot))

    async def shutdown(self, grace: float = 30.0) -> None:
        """Stop every model; workers get ``grace`` seconds to finish in-flight batches."""
        self.draining = True
        self.save_state("shutdown")  # ModelServer.stop: before the models go
        self.startup.close()
        await self.autoscaler.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(self._discard(mv, grace) for mv in self.registry.all()))
        if self.zygote is not None:
            await self.zygote.close()
