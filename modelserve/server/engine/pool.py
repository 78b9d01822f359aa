"""The worker pool of one model version: scale, pick the least-busy worker, restart the dead."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from modelserve.errors import ModelServeError
from modelserve.server.engine.jobs import Job
from modelserve.server.engine.worker_spec import WorkerSpec
from modelserve.server.engine.workers import WorkerProcess, WorkerStoppedWhileStarting
from modelserve.server.engine.zygote import Zygote

log = logging.getLogger("modelserve.pool")

MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0  # a worker that lived this long resets the restart backoff
CRASH_LOOP_LIMIT = 3  # this many crashes, each within STABLE_AFTER_S of the last: unhealthy


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class WorkerPool:
    def __init__(self, spec: WorkerSpec, threads: Callable[[int], int],
                 on_change: Callable[[], None],
                 on_batch_done: Callable[[list[Job], float, list[Any], float], None],
                 zygote: Zygote | None = None, batch_done_first: bool = False) -> None:
        """``threads(workers)`` says, when a worker starts, how many threads it should use
        while its version wants ``workers`` workers; workers are forked by ``zygote`` when
        there is one. ``batch_done_first``: ``on_batch_done`` runs before a batch's answers
        are released, else just after."""
        self.spec = spec
        self.zygote = zygote
        self._threads = threads
        self.workers: list[WorkerProcess] = []
        self.target = 0
        self.restarts = 0
        self._on_change = on_change
        self._on_batch_done = on_batch_done
        self._batch_done_first = batch_done_first
        self._backoff = 1.0
        self._restart_task: asyncio.Task[None] | None = None
        self._closed = False
        self._next_index = 0
        # Crash-loop detection: consecutive short-lived deaths or failed restarts.
        self.crashes = 0
        self.last_crash = 0.0
        self.last_death = ""
        self.ever_ready = False  # a worker of this pool has loaded the model at least once
        # TorchServe's recovery bookkeeping, logged in its words (operators grep for them):
        # batches timed out since the last recovery, and when the current recovery began
        self.failed_inferences = 0
        self.recovery_start_ms = 0
        # Told (worker id, milliseconds from start to ready) of each worker that came up.
        self.on_ready: Callable[[int, float], None] | None = None
        # Puts the jobs of a dead worker back at the head of the batcher's queue (set by the
        # owner once the batcher exists); None: they fail at once.
        self.requeue: Callable[[list[Job]], None] | None = None
        # Caps the batch size when a worker's model takes smaller batches (set by the owner)
        self.limit_batch: Callable[[int], None] = lambda limit: None
        # The ready workers health asks for: the autoscaler sets its minWorkers (a worker it
        # adds does not make the model Loading); None: the target.
        self.min_ready: int | None = None

    # -- selection (hot path) ----------------------------------------------------------------
    def pick(self) -> WorkerProcess | None:
        """The ready worker with the fewest batches in flight and room for one more."""
        best: WorkerProcess | None = None
        for worker in self.workers:
            if worker.available and (best is None or len(worker.inflight) < len(best.inflight)):
                best = worker
        return best

    def has_idle(self) -> bool:
        return any(w.idle for w in self.workers)

    @property
    def ready_count(self) -> int:
        return sum(1 for w in self.workers if w.status == "READY")

    @property
    def crash_looping(self) -> bool:
        return (self.crashes >= CRASH_LOOP_LIMIT
                and time.time() - self.last_crash < STABLE_AFTER_S)

    @property
    def never_started(self) -> bool:
        """No worker has ever loaded, none is starting, and a start has failed: requests get
        503 at once while the restarts go on (they might fail for long)."""
        return not self.ever_ready and not self.workers and self.crashes > 0

    def start_failed_line(self, exc: BaseException) -> str:
        """The log line of a failed worker start, in the words lifecycle_log asks for."""
        if self.spec.lifecycle_log == "torchserve":  # BatchAggregator.sendError
            return f"Load model failed: {self.spec.model_name}, error: Worker died."
        return f"a {self.spec.model_name} worker failed to start: {exc}"

    @property
    def health(self) -> str:
        """Healthy, Loading (fewer ready workers than the target) or Unhealthy (crash loop)."""
        if self.crash_looping:
            return "Unhealthy"
        wanted = self.target if self.min_ready is None else min(self.min_ready, self.target)
        return "Loading" if self.ready_count < wanted else "Healthy"

    # -- scaling -----------------------------------------------------------------------------
    async def scale(self, count: int, grace: float = 30.0) -> None:
        """Start or stop workers until ``count`` are live; waits for new ones to load, and
        for stopped ones to finish their batches (up to ``grace`` s each). Nothing to do once
        the pool is closed (its version was unregistered)."""
        if self._closed:
            return
        self.target = count
        live = [w for w in self.workers if w.status in ("STARTING", "READY")]
        if len(live) < count:
            await asyncio.gather(*(self._start_one() for _ in range(count - len(live))))
        elif len(live) > count:
            surplus = sorted(live, key=lambda w: (w.status == "READY", len(w.inflight)))
            await asyncio.gather(*(self._stop_one(w, grace)
                                   for w in surplus[: len(live) - count]))

    @property
    def next_index(self) -> int:
        """The index the next worker starts with (worker i is on cuda:(i mod devices))."""
        return self._next_index

    def retune(self, sharing: int = 0) -> None:
        """Tell each ready worker the threads a worker started now would get: the cores
        shared among the pool's target (the autoscaler calls it after each change), or
        among ``sharing`` workers when other models' busy workers share the cores too."""
        threads = self._threads(max(1, self.target, sharing))
        for worker in self.workers:
            if worker.status == "READY" and worker.threads != threads:
                worker.set_threads(threads)

    async def close(self, grace: float = 30.0) -> None:
        """Stop every worker, each finishing its in-flight batches within ``grace`` s."""
        self._closed = True
        self.target = 0
        if self._restart_task is not None:
            self._restart_task.cancel()
        await asyncio.gather(*(self._stop_one(w, grace) for w in list(self.workers)))

    async def _start_one(self) -> None:
        if self._closed:
            return
        # its lanes are planned for the threads it would get alone (retune gives them later)
        worker = WorkerProcess(self.spec, self._next_index, self._threads(self.target),
                               self._on_change, self._exited, self.zygote,
                               most_threads=self._threads(1))
        self._next_index += 1
        worker.on_batch_done = self._on_batch_done
        worker.batch_done_first = self._batch_done_first
        worker.on_orphans = self._orphans
        worker.on_timed_out = self._timed_out
        worker.on_batch_limit = lambda limit: self.limit_batch(limit)
        self.workers.append(worker)
        started = time.perf_counter()
        try:
            await worker.start()
        except WorkerStoppedWhileStarting:  # scaled down or closed meanwhile: as asked
            if worker in self.workers:
                self.workers.remove(worker)
        except BaseException:
            if worker in self.workers:
                self.workers.remove(worker)
            await worker.kill()
            raise
        else:
            self.ever_ready = True
            if self.on_ready is not None:
                self.on_ready(worker.id, (time.perf_counter() - started) * 1000)

    async def _stop_one(self, worker: WorkerProcess, grace: float = 30.0) -> None:
        await worker.stop(grace)
        if worker in self.workers:
            self.workers.remove(worker)
        self._on_change()

    # -- crash recovery ----------------------------------------------------------------------
    def _orphans(self, jobs: list[Job], err: ModelServeError) -> None:
        """A worker died with these jobs in flight: each is retried once on another ready
        worker, if there is one; otherwise (or on its second death) it gets ``err``."""
        others = any(w.status == "READY" for w in self.workers)
        retry = [j for j in jobs if not j.retried and not j.future.done()]
        if self.requeue is None or not others or self._closed:
            retry = []
        for job in jobs:
            if job in retry:
                job.retried = True
            elif job.retried:
                job.fail(ModelServeError(f"{err.message}; the request had already been "
                                         "retried once", status=err.status, type=err.type))
            else:
                job.fail(err)
        if retry:
            log.warning("retrying %d request(s) of a dead %s worker on another worker",
                        len(retry), self.spec.model_name)
            assert self.requeue is not None
            self.requeue(retry)

    def _timed_out(self) -> None:
        self.failed_inferences += 1
        log.error("%s: Number or consecutive unsuccessful inference %d", self.spec.model_name,
                  self.failed_inferences)

    def _crashed(self, cause: str) -> None:
        now = time.time()
        if now - self.last_crash > STABLE_AFTER_S:
            self.crashes = 0
        self.crashes += 1
        self.last_crash = now
        self.last_death = cause
        if self.crashes == CRASH_LOOP_LIMIT:
            # the cause (the handler's exception) is in the worker's own lines; TorchServe's
            # log, which scripts split on it, names it nowhere else
            why = "" if self.spec.lifecycle_log == "torchserve" else f": {cause}"
            log.error("%s is crash-looping (%d worker deaths/failed starts in a row, each "
                      "within %.0fs); marked unhealthy%s", self.spec.model_name,
                      self.crashes, STABLE_AFTER_S, why)

    def _exited(self, worker: WorkerProcess) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        if self._closed or worker.status == "STOPPED":
            return
        if time.time() - worker.start_time > STABLE_AFTER_S:
            self._backoff = 1.0
            self.crashes = 0
        self._crashed(worker.death_cause)
        if self.recovery_start_ms == 0:
            self.recovery_start_ms = int(time.time() * 1000)
            log.info("%s: Auto recovery start timestamp: %d", self.spec.model_name,
                     self.recovery_start_ms)
        else:
            log.warning("%s: Auto recovery failed again", self.spec.model_name)
        if self._restart_task is None or self._restart_task.done():
            self._restart_task = asyncio.create_task(self._restore())

    def restore_later(self, cause: str) -> None:
        """A start that failed (a model's first, at server start) is retried as a dead
        worker is: counted as a failed restart, then the pool is brought back to its target
        with the restart backoff."""
        self._crashed(cause)
        if not self._closed and (self._restart_task is None or self._restart_task.done()):
            self._restart_task = asyncio.create_task(self._restore())

    async def _restore(self) -> None:
        """Bring the pool back to its target, waiting longer after each failed start."""
        while not self._closed:
            live = sum(1 for w in self.workers if w.status in ("STARTING", "READY"))
            if live >= self.target:
                return
            log.warning("Retry worker: %s in %.0f seconds.", self.spec.model_name, self._backoff)
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
            if self._closed:
                return
            self.restarts += 1
            try:
                await self._start_one()
            except Exception as exc:
                log.error("%s", self.start_failed_line(exc))
                self._crashed(f"restart failed: {exc}")
                continue
            if self.recovery_start_ms:
                log.info("%s: Auto recovery succeeded, reset recoveryStartTS",
                         self.spec.model_name)
                self.recovery_start_ms = self.failed_inferences = 0
