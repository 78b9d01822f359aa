"""Continuous batching against in-process fake workers that generate a token per step and
keep each request's state (as a continuous-batching handler's cache is)."""

from __future__ import annotations

import asyncio

import pytest

from modelserve.errors import ModelServeError
from modelserve.ipc import STREAM_NEXT
from modelserve.server.engine.continuous import ContinuousBatcher
from modelserve.server.engine.jobs import Job, Result
from modelserve.server.engine.streams import Stream
from tests.unit.fake_workers import FakeWorker


class GeneratingWorker(FakeWorker):
    """Each step: a request with a body ``N`` starts with N tokens to go; every request of
    the step gets one token (``t<k>``) and ``ts_stream_next: true`` until its last. A step
    that brings data for a request it holds, or none for one it does not, is a bug here."""

    def __init__(self, pool: FakePool, compute_s: float = 0.005) -> None:
        super().__init__(pool, compute_s)
        self.steps = self.batches  # the request ids of each step
        self.left: dict[str, int] = {}
        self.done: dict[str, int] = {}

    def die(self, error: ModelServeError) -> None:
        """What the pool does for a dead worker's steps: none retried (no other worker)."""
        for job in self.stop():
            job.fail(error)

    def answer(self, job: Job) -> None:
        rid = job.request_id
        if job.body is not None:
            assert rid not in self.left, f"{rid} sent with data again"
            self.left[rid], self.done[rid] = int(job.body), 0
        assert rid in self.left, f"{rid} sent without data first"
        self.left[rid] -= 1
        self.done[rid] += 1
        more = self.left[rid] > 0
        if not more:
            del self.left[rid]
        job.resolve(Result(200, "text/plain", f"t{self.done[rid]} ".encode(),
                           {STREAM_NEXT: "true" if more else "false"}))


class FakePool:
    def __init__(self) -> None:
        self.workers: list[GeneratingWorker] = []
        self.target = 0
        self.never_started = False
        self.batcher: ContinuousBatcher


def make(workers: int = 1, batch_size: int = 2) -> tuple[ContinuousBatcher, FakePool]:
    pool = FakePool()
    batcher = ContinuousBatcher("m", pool, batch_size, 5.0, 1000, 5.0)  # type: ignore[arg-type]
    pool.batcher = batcher
    pool.workers = [GeneratingWorker(pool) for _ in range(workers)]
    pool.target = workers
    batcher.start()
    return batcher, pool


def submit(batcher: ContinuousBatcher, rid: str, tokens: int) -> Job:
    job = Job(rid, "text/plain", str(tokens).encode(), {},
              asyncio.get_running_loop().create_future())
    batcher.submit(job)
    return job


async def read(job: Job) -> bytes:
    answer = await asyncio.wait_for(job.future, 5)
    if isinstance(answer, Result):
        return answer.body
    assert isinstance(answer, Stream)
    return b"".join([chunk async for chunk in answer])


async def test_requests_join_between_steps_and_leave_when_done():
    batcher, pool = make(batch_size=2)
    a = submit(batcher, "a", 20)
    await asyncio.sleep(0.02)  # a is running (20 steps of 5 ms)
    b, c = submit(batcher, "b", 2), submit(batcher, "c", 1)
    assert await read(a) == "".join(f"t{k} " for k in range(1, 21)).encode()
    assert await read(b) == b"t1 t2 "
    assert await read(c) == b"t1 "
    steps = pool.workers[0].steps
    assert steps[0] == ["a"]
    assert max(len(s) for s in steps) == 2  # never more than batchSize
    joined = next(i for i, s in enumerate(steps) if "b" in s)
    assert steps[joined] == ["a", "b"]  # b joined a's running batch
    assert any("c" in s for s in steps[joined + 2:])  # c waited for room (b's 2 steps)
    assert steps[-1] == ["a"]
    assert not pool.workers[0].left  # every request ran to its end
    await batcher.close(ModelServeError("closed"))


async def test_a_one_step_request_gets_a_whole_answer():
    batcher, _ = make()
    job = submit(batcher, "x", 1)
    answer = await asyncio.wait_for(job.future, 5)
    assert isinstance(answer, Result) and answer.body == b"t1 "
    await batcher.close(ModelServeError("closed"))


async def test_a_stream_its_consumer_closed_is_not_stepped_again():
    batcher, pool = make()
    job = submit(batcher, "gone", 1000)
    stream = await asyncio.wait_for(job.future, 5)
    assert isinstance(stream, Stream)
    stream.close()
    other = submit(batcher, "next", 3)
    assert await read(other) == b"t1 t2 t3 "
    steps = pool.workers[0].steps
    last_gone = max(i for i, s in enumerate(steps) if "gone" in s)
    assert last_gone < len(steps) - 1 and steps[-1] == ["next"]
    await batcher.close(ModelServeError("closed"))


async def test_a_dead_worker_ends_its_streams_and_requeues_what_never_ran():
    batcher, pool = make(workers=1, batch_size=4)
    first = pool.workers[0]
    first.compute_s = 0.2  # time to see a step in flight
    streaming = submit(batcher, "s", 1000)
    stream = await asyncio.wait_for(streaming.future, 5)
    assert isinstance(stream, Stream)
    fresh = submit(batcher, "f", 2)
    while "f" not in first.steps[-1]:  # f's first step is in flight
        await asyncio.sleep(0.001)
    error = ModelServeError("worker died", status=500)
    first.die(error)
    with pytest.raises(ModelServeError, match="worker died"):
        await read(streaming)  # its state went with the worker
    second = GeneratingWorker(pool)
    pool.workers.append(second)
    batcher.wake()
    assert await read(fresh) == b"t1 t2 "  # started afresh on the new worker
    assert second.steps[0] == ["f"]
    await batcher.close(ModelServeError("closed"))


async def test_an_error_answer_ends_a_stream_with_it_and_fails_a_new_request():
    batcher, pool = make(batch_size=4)
    worker = pool.workers[0]
    running = submit(batcher, "r", 1000)
    stream = await asyncio.wait_for(running.future, 5)
    assert isinstance(stream, Stream)

    def failing(job: Job) -> None:  # the handler raised: the whole step is answered 500
        job.resolve(Result(500, "application/json",
                           b'{"code": 500, "type": "InternalServerException", '
                           b'"message": "Prediction failed"}', {}))

    worker.answer = failing  # type: ignore[method-assign]
    fresh = submit(batcher, "n", 3)
    with pytest.raises(ModelServeError, match="Prediction failed"):
        await read(running)
    answer = await asyncio.wait_for(fresh.future, 5)
    assert isinstance(answer, Result) and answer.status == 500
    await asyncio.sleep(0.05)
    assert batcher.running[worker] == [] or all(e.finished for e in batcher.running[worker])
    await batcher.close(ModelServeError("closed"))
