"""The batcher against in-process fake workers (no processes): policy and bounds."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelserve.errors import ServiceUnavailableError
from modelserve.server.engine.batching import Batcher
from modelserve.server.engine.jobs import ClientGoneError, Job, Result


class FakeWorker:
    """Answers each batch after ``compute_s``; records the batches it received."""

    def __init__(self, pool: FakePool, compute_s: float, depth: int = 2) -> None:
        self.pool = pool
        self.compute_s = compute_s
        self.depth = depth
        self.status = "READY"
        self.inflight: dict[int, list[Job]] = {}
        self.batches: list[int] = []
        self._next = 0
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._task = asyncio.create_task(self._serve())

    @property
    def available(self) -> bool:
        return len(self.inflight) < self.depth

    def send(self, jobs: list[Job]) -> None:
        self._next += 1
        self.inflight[self._next] = jobs
        self.batches.append(len(jobs))
        self._queue.put_nowait(self._next)

    async def _serve(self) -> None:  # one batch at a time, like the real worker loop
        while True:
            batch_id = await self._queue.get()
            await asyncio.sleep(self.compute_s)
            for job in self.inflight.pop(batch_id):
                job.resolve(Result(200, "text/plain", job.body, {}))
            self.pool.batcher.wake()


class FakePool:
    def __init__(self) -> None:
        self.workers: list[FakeWorker] = []
        self.target = 0
        self.never_started = False  # WorkerPool: a first start failed, restarts pending
        self.batcher: Batcher

    def pick(self) -> FakeWorker | None:
        free = [w for w in self.workers if w.available]
        return min(free, key=lambda w: len(w.inflight)) if free else None

    def has_idle(self) -> bool:
        return any(not w.inflight for w in self.workers)


def make(batch_size=8, delay_ms=50.0, queue_size=1000, workers=1, compute_s=0.02):
    pool = FakePool()
    batcher = Batcher("m", pool, batch_size, delay_ms, queue_size, queue_timeout_s=5)  # type: ignore[arg-type]
    pool.batcher = batcher
    pool.workers = [FakeWorker(pool, compute_s) for _ in range(workers)]
    pool.target = workers
    batcher.start()
    return batcher, pool


def job(i: int) -> Job:
    future = asyncio.get_running_loop().create_future()
    return Job(str(i), "text/plain", str(i).encode(), {}, future)


async def test_lone_request_on_idle_server_is_not_held_for_the_delay():
    batcher, _ = make(delay_ms=500)
    j = job(0)
    start = time.perf_counter()
    batcher.submit(j)
    result = await j.future
    assert result.body == b"0"
    assert time.perf_counter() - start < 0.25  # far below the 500 ms delay


async def test_batches_fill_under_load_and_every_request_is_answered():
    batcher, pool = make(batch_size=8, delay_ms=50, compute_s=0.02)
    jobs = [job(i) for i in range(200)]
    for j in jobs:
        batcher.submit(j)
    results = await asyncio.gather(*(j.future for j in jobs))
    assert [r.body for r in results] == [str(i).encode() for i in range(200)]  # order kept
    sizes = pool.workers[0].batches
    assert sum(sizes) == 200 and max(sizes) == 8
    assert sum(sizes) / len(sizes) > 6


async def test_batch_never_exceeds_batch_size_with_many_workers():
    batcher, pool = make(batch_size=4, workers=3, compute_s=0.01)
    jobs = [job(i) for i in range(100)]
    for j in jobs:
        batcher.submit(j)
    await asyncio.gather(*(j.future for j in jobs))
    all_sizes = [s for w in pool.workers for s in w.batches]
    assert sum(all_sizes) == 100 and max(all_sizes) <= 4
    assert all(w.batches for w in pool.workers)  # the load is spread


async def test_partial_batch_waits_at_most_the_delay_when_workers_are_busy():
    batcher, pool = make(batch_size=8, delay_ms=30, compute_s=0.3)
    first = job(0)
    batcher.submit(first)  # occupies the idle worker for 300 ms
    await asyncio.sleep(0.01)
    second = job(1)
    start = time.perf_counter()
    batcher.submit(second)  # worker busy, batch of 1: goes out after ~30 ms (pipelined)
    await asyncio.sleep(0.1)
    assert pool.workers[0].batches == [1, 1]
    await second.future
    assert time.perf_counter() - start < 1.0


async def test_full_queue_is_refused_at_once():
    batcher, _ = make(queue_size=3, compute_s=1.0)
    batcher.pool.workers[0].depth = 0  # nothing leaves the queue
    for i in range(3):
        batcher.submit(job(i))
    with pytest.raises(ServiceUnavailableError, match="job_queue_size"):
        batcher.submit(job(3))


async def test_no_workers_is_refused_at_once():
    batcher, pool = make(workers=0)
    pool.workers = []
    with pytest.raises(ServiceUnavailableError, match="no worker"):
        batcher.submit(job(0))


async def test_cancelled_requests_are_skipped():
    batcher, pool = make(batch_size=8, compute_s=0.2)
    blocker = job(-1)
    batcher.submit(blocker)
    await asyncio.sleep(0.01)
    pool.workers[0].depth = 1  # hold the rest in the queue
    jobs = [job(i) for i in range(6)]
    for j in jobs:
        batcher.submit(j)
    for j in jobs[:3]:
        j.future.cancel()  # the clients went away
    await asyncio.gather(*(j.future for j in jobs[3:]))
    assert pool.workers[0].batches == [1, 3]


async def test_requests_of_disconnected_clients_are_answered_499_and_skipped():
    batcher, pool = make(batch_size=8, compute_s=0.2)
    batcher.submit(job(-1))
    await asyncio.sleep(0.01)
    pool.workers[0].depth = 1  # hold the rest in the queue
    left = {"0": False, "1": False, "2": False, "3": False}
    jobs = [job(i) for i in range(4)]
    for j in jobs:
        j.gone = lambda rid=j.request_id: left[rid]
        batcher.submit(j)
    left["1"] = left["2"] = True  # their clients disconnect while they wait
    assert [r.body for r in await asyncio.gather(jobs[0].future, jobs[3].future)] == [b"0", b"3"]
    for j in jobs[1:3]:
        with pytest.raises(ClientGoneError) as caught:
            await j.future
        assert caught.value.status == 499
    assert pool.workers[0].batches == [1, 2]


async def test_close_fails_queued_requests():
    batcher, pool = make(compute_s=1.0)
    pool.workers[0].depth = 0
    j = job(0)
    batcher.submit(j)
    await batcher.close(ServiceUnavailableError("gone"))
    with pytest.raises(ServiceUnavailableError, match="gone"):
        await j.future
