"""The worker pool of one model version: scale, pick the least-busy worker, restart the dead."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from modelserve.server.jobs import Job
from modelserve.server.workers import WorkerProcess, WorkerSpec

log = logging.getLogger("modelserve.pool")

MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0  # a worker that lived this long resets the restart backoff


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class WorkerPool:
    def __init__(self, spec: WorkerSpec, threads: Callable[[], int], on_change: Callable[[], None],
                 on_batch_done: Callable[[list[Job], float, list[Any]], None]) -> None:
        """``threads`` says, when a worker starts, how many threads it should use."""
        self.spec = spec
        self._threads = threads
        self.workers: list[WorkerProcess] = []
        self.target = 0
        self.restarts = 0
        self._on_change = on_change
        self._on_batch_done = on_batch_done
        self._backoff = 1.0
        self._restart_task: asyncio.Task[None] | None = None
        self._closed = False
        self._next_index = 0

    # -- selection (hot path) ----------------------------------------------------------------
    def pick(self) -> WorkerProcess | None:
        """The ready worker with the fewest batches in flight and room for one more."""
        best: WorkerProcess | None = None
        for worker in self.workers:
            if worker.available and (best is None or len(worker.inflight) < len(best.inflight)):
                best = worker
        return best

    def has_idle(self) -> bool:
        return any(w.status == "READY" and not w.inflight for w in self.workers)

    @property
    def ready_count(self) -> int:
        return sum(1 for w in self.workers if w.status == "READY")

    # -- scaling -----------------------------------------------------------------------------
    async def scale(self, count: int) -> None:
        """Start or stop workers until ``count`` are live; waits for new ones to load."""
        self.target = count
        live = [w for w in self.workers if w.status in ("STARTING", "READY")]
        if len(live) < count:
            await asyncio.gather(*(self._start_one() for _ in range(count - len(live))))
        elif len(live) > count:
            surplus = sorted(live, key=lambda w: (w.status == "READY", len(w.inflight)))
            await asyncio.gather(*(self._stop_one(w) for w in surplus[: len(live) - count]))

    async def close(self) -> None:
        self._closed = True
        self.target = 0
        if self._restart_task is not None:
            self._restart_task.cancel()
        await asyncio.gather(*(self._stop_one(w) for w in list(self.workers)))

    async def _start_one(self) -> None:
        worker = WorkerProcess(self.spec, self._next_index, self._threads(), self._on_change,
                               self._exited)
        self._next_index += 1
        worker.on_batch_done = self._on_batch_done
        self.workers.append(worker)
        try:
            await worker.start()
        except BaseException:
            if worker in self.workers:
                self.workers.remove(worker)
            await worker.kill()
            raise

    async def _stop_one(self, worker: WorkerProcess) -> None:
        await worker.stop()
        if worker in self.workers:
            self.workers.remove(worker)
        self._on_change()

    # -- crash recovery ----------------------------------------------------------------------
    def _exited(self, worker: WorkerProcess) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        if self._closed or worker.status == "STOPPED":
            return
        if time.time() - worker.start_time > STABLE_AFTER_S:
            self._backoff = 1.0
        if self._restart_task is None or self._restart_task.done():
            self._restart_task = asyncio.create_task(self._restore())

    async def _restore(self) -> None:
        """Bring the pool back to its target, waiting longer after each failed start."""
        while not self._closed:
            live = sum(1 for w in self.workers if w.status in ("STARTING", "READY"))
            if live >= self.target:
                return
            log.warning("restarting a worker of %s in %.0fs", self.spec.model_name, self._backoff)
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
            if self._closed:
                return
            self.restarts += 1
            try:
                await self._start_one()
            except Exception as exc:
                log.error("restart of a %s worker failed: %s", self.spec.model_name, exc)
