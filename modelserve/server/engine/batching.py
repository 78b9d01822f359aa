"""Dynamic batching for one model version.

Policy: a request goes out at once when a worker is idle (no batch in flight), with whatever
else is already queued; when every worker is busy, the batch keeps filling up to
``batch_size`` or until ``max_batch_delay`` after its first request, and is then queued on the
least-busy worker (pipelining) so it starts the moment that worker is free. Under load batches
fill by themselves; an idle server adds no delay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from modelserve.errors import QueueFullError, ServiceUnavailableError
from modelserve.server.engine.jobs import ClientGoneError, Job
from modelserve.server.engine.pool import WorkerPool

log = logging.getLogger("modelserve.batching")

QUEUE_SWEEP_S = 1.0  # how often queued requests are checked against their deadline


class Batcher:
    def __init__(self, name: str, pool: WorkerPool, batch_size: int, max_batch_delay_ms: float,
                 queue_size: int, queue_timeout_s: float) -> None:
        self.name = name
        self.pool = pool
        self.batch_size = batch_size
        self.max_delay = max_batch_delay_ms / 1000.0
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout_s
        self.pending: deque[Job] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed: ServiceUnavailableError | None = None
        # Set by the autoscaler (engine/autoscale.py): asked when a request finds no worker,
        # True if one is coming; the request then waits for it instead of a 503.
        self.on_demand: Callable[[], bool] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher:{self.name}")

    async def close(self, error: ServiceUnavailableError) -> None:
        self._closed = error  # later submissions get it too: no task would take them
        if self._task is not None:
            self._task.cancel()
        self._fail_pending(error)

    def _fail_pending(self, error: ServiceUnavailableError) -> None:
        while self.pending:
            self.pending.popleft().fail(error)

    def wake(self) -> None:
        self._wake.set()

    @property
    def queued(self) -> int:
        """Requests admitted and not yet sent to a worker."""
        return len(self.pending)

    def _no_worker(self) -> ServiceUnavailableError | None:
        """The error for a model scaled to zero workers (none will come without a scale call)."""
        if self.pool.target == 0 and not self.pool.workers:
            if self.on_demand is not None and self.on_demand():
                return None  # scaled to zero: a worker is being started for it
            return ServiceUnavailableError(
                f'Model "{self.name}" has no worker to serve inference request. '
                "Please use scale workers API to add workers."
            )
        if self.pool.never_started:  # its first start failed; restarts go on meanwhile
            return ServiceUnavailableError(
                f'Model "{self.name}" has no worker to serve inference request: its workers '
                f"failed to start ({self.pool.last_death}); retrying.")
        return None

    def submit(self, job: Job) -> None:
        if (error := self._closed or self._no_worker()) is not None:
            raise error
        if len(self.pending) >= self.queue_size:
            raise QueueFullError(
                f'Model "{self.name}" has {self.queue_size} requests queued (job_queue_size); '
                "retry later"
            )
        self.pending.append(job)
        self._wake.set()

    def requeue(self, jobs: list[Job]) -> None:
        """Put already-admitted jobs (a dead worker's) back at the head, in their order."""
        self.pending.extendleft(reversed(jobs))
        self._wake.set()

    async def _wait(self, timeout: float | None) -> None:
        self._wake.clear()
        if timeout is None:
            await self._wake.wait()
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    def _expire_queued(self, queue: deque[Job], now: float) -> None:
        """Fail the requests at the head of ``queue`` that waited longer than the queue
        timeout for a worker."""
        limit = now - self.queue_timeout
        while queue and queue[0].arrival < limit:
            queue.popleft().fail(ServiceUnavailableError(
                f'Model "{self.name}" had no worker available within {self.queue_timeout:g}s'
            ))

    @staticmethod
    def runnable(job: Job) -> bool:
        """Whether a queued job is still wanted: not cancelled (a gRPC client gave up) or
        already failed, and its HTTP client still there (else it fails, 499)."""
        if job.future.done():
            return False
        if job.gone is not None and job.gone():
            job.fail(ClientGoneError("the client disconnected before its request was run"))
            return False
        return True

    def _take(self, limit: int | None = None) -> list[Job]:
        """Up to ``limit`` (the batch size) queued jobs that are still wanted."""
        limit = self.batch_size if limit is None else limit
        batch: list[Job] = []
        while self.pending and len(batch) < limit:
            job = self.pending.popleft()
            if self.runnable(job):
                batch.append(job)
        return batch

    async def _run(self) -> None:
        pool = self.pool
        while True:
            try:
                while not self.pending:
                    await self._wait(None)
                # Fill: only worth waiting while no worker could start the batch right now.
                deadline = self.pending[0].arrival + self.max_delay
                while len(self.pending) < self.batch_size and not pool.has_idle():
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    await self._wait(remaining)
                worker = pool.pick()
                while worker is None and (error := self._no_worker()) is None:
                    await self._wait(QUEUE_SWEEP_S)
                    self._expire_queued(self.pending, time.perf_counter())
                    worker = pool.pick()
                if worker is None:  # scaled to zero while these waited: answer them now
                    self._fail_pending(error)
                    continue
                batch = self._take()
                if batch:
                    worker.send(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop the model from serving
                log.exception("batcher for %s failed; continuing", self.name)
                await asyncio.sleep(0.01)
