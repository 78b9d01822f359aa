"""A worker's answer in the frontend: the requests waiting for it run before the batch's
bookkeeping (metrics, metric log lines), which still sees when the answer came."""

from __future__ import annotations

import asyncio
import time

from modelserve.server.engine.jobs import Job
from modelserve.server.engine.worker_spec import WorkerSpec
from modelserve.server.engine.workers import WorkerProcess


class Writer:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.frames.append(data)


async def test_requests_are_answered_before_the_batch_bookkeeping_runs():
    spec = WorkerSpec("m", "1", "/nonexistent", "h.py", (), {}, {}, 8, "cpu", 10, 10, 2)
    worker = WorkerProcess(spec, 0, 1, on_change=lambda: None, on_exit=lambda w: None)
    worker._writer = Writer()  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    order: list[str] = []
    seen: list[tuple[list[Job], float, list, float]] = []

    def bookkeeping(jobs: list[Job], ms: float, custom: list, done_at: float) -> None:
        order.append("bookkeeping")
        seen.append((jobs, ms, custom, done_at))

    worker.on_batch_done = bookkeeping
    jobs = [Job(str(i), "text/plain", b"x", {}, loop.create_future()) for i in range(2)]

    async def client(job: Job) -> None:
        result = await job.future
        order.append(f"answered {job.request_id}: {result.body!r}")

    clients = [asyncio.create_task(client(job)) for job in jobs]
    await asyncio.sleep(0)  # both wait for their answers
    worker.send(jobs)
    before = time.perf_counter()
    worker._complete({"op": "result", "id": 0, "ms": 1.5, "metrics": [["m", 1]],
                      "out": [[200, "text/plain", b"a", {}], [200, "text/plain", b"b", {}]]})
    after = time.perf_counter()
    assert order == []  # nothing ran inside the reader's step
    await asyncio.gather(*clients)
    await asyncio.sleep(0)
    assert order == ["answered 0: b'a'", "answered 1: b'b'", "bookkeeping"]
    [(batch, ms, custom, done_at)] = seen
    assert batch == jobs and ms == 1.5 and custom == [["m", 1]]
    assert before <= done_at <= after  # the answer's time, not the bookkeeping's
    assert worker.inflight == {} and worker._timers == {}


async def test_with_a_metrics_log_the_bookkeeping_runs_first_and_cannot_lose_answers():
    """batch_done_first (a metrics log: its lines must be there when a client has its
    answer): the bookkeeping runs before the answers are released, and if it fails the
    answers still go."""
    spec = WorkerSpec("m", "1", "/nonexistent", "h.py", (), {}, {}, 8, "cpu", 10, 10, 2)
    worker = WorkerProcess(spec, 0, 1, on_change=lambda: None, on_exit=lambda w: None)
    worker._writer = Writer()  # type: ignore[assignment]
    worker.batch_done_first = True
    loop = asyncio.get_running_loop()
    answered_when_booked: list[bool] = []

    def bookkeeping(jobs: list[Job], ms: float, custom: list, done_at: float) -> None:
        answered_when_booked.append(any(job.future.done() for job in jobs))
        raise RuntimeError("a broken metric")

    worker.on_batch_done = bookkeeping
    jobs = [Job(str(i), "text/plain", b"x", {}, loop.create_future()) for i in range(2)]
    worker.send(jobs)
    worker._complete({"op": "result", "id": 0, "ms": 1.0, "metrics": [],
                      "out": [[200, "text/plain", b"a", {}], [200, "text/plain", b"b", {}]]})
    assert answered_when_booked == [False]
    assert [job.future.result().body for job in jobs] == [b"a", b"b"]
