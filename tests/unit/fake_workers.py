"""An in-process stand-in for a worker process, for the batchers' unit tests: it takes
batches (``send``), records them, and answers each request after ``compute_s`` through
:meth:`FakeWorker.answer`, which a test's subclass defines (its handler)."""

from __future__ import annotations

import asyncio
from typing import Any

from modelserve.server.engine.jobs import Job


class FakeWorker:
    def __init__(self, pool: Any, compute_s: float) -> None:
        self.pool = pool  # has .workers (this one among them) and .batcher
        self.compute_s = compute_s
        self.status = "READY"
        self.inflight: dict[int, list[Job]] = {}
        self.batches: list[list[str]] = []  # what :meth:`label` says of each batch's jobs
        self._next = 0
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._task = asyncio.create_task(self._serve())

    @property
    def idle(self) -> bool:
        return self.status == "READY" and not self.inflight

    def send(self, jobs: list[Job]) -> None:
        self._next += 1
        self.inflight[self._next] = jobs
        self.batches.append([self.label(j) for j in jobs])
        self._queue.put_nowait(self._next)

    def stop(self) -> list[Job]:
        """Die: the jobs in flight, as the pool's orphan handling gets them."""
        self.status = "DEAD"
        self._task.cancel()
        orphans = [j for jobs in self.inflight.values() for j in jobs]
        self.inflight.clear()
        self.pool.workers.remove(self)
        return orphans

    def label(self, job: Job) -> str:
        return job.request_id

    def answer(self, job: Job) -> None:
        raise NotImplementedError

    async def _serve(self) -> None:
        while True:
            batch_id = await self._queue.get()
            await asyncio.sleep(self.compute_s)
            for job in self.inflight.pop(batch_id):
                self.answer(job)
            self.pool.batcher.wake()
