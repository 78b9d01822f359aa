"""Sequence batching (stateful models) against in-process fake workers that keep state."""

from __future__ import annotations

import asyncio

import pytest

from modelserve.errors import ServiceUnavailableError
from modelserve.server.engine import sequences
from modelserve.server.engine.jobs import Job, Result
from modelserve.server.engine.sequences import (
    SEQUENCE_END,
    SEQUENCE_ID,
    SEQUENCE_START,
    SequenceBatcher,
)
from tests.unit.fake_workers import FakeWorker


class StatefulWorker(FakeWorker):
    """A worker whose handler adds each request's number to its sequence's running sum,
    kept in this worker only (as a stateful handler's cache is); answers the sum. A body
    ``end`` answers with the sequence-end header."""

    def __init__(self, pool: FakePool, compute_s: float) -> None:
        super().__init__(pool, compute_s)
        self.sums: dict[str, int] = {}

    def label(self, job: Job) -> str:
        return job.headers[SEQUENCE_ID]

    def die(self) -> list[Job]:
        return self.stop()

    def answer(self, job: Job) -> None:
        sid = job.headers[SEQUENCE_ID]
        if job.body == b"end":
            job.resolve(Result(200, "text/plain", b"bye", {SEQUENCE_END: sid}))
            return
        self.sums[sid] = self.sums.get(sid, 0) + int(job.body)
        job.resolve(Result(200, "text/plain", str(self.sums[sid]).encode(), {}))


class FakePool:
    def __init__(self) -> None:
        self.workers: list[StatefulWorker] = []
        self.target = 0
        self.never_started = False
        self.batcher: SequenceBatcher


def make(workers: int = 2, batch_size: int = 4, max_sequences: int = 8, max_queued: int = 10,
         max_idle_ms: int = 5000, timeout_ms: int = 0, compute_s: float = 0.01,
         ) -> tuple[SequenceBatcher, FakePool]:
    pool = FakePool()
    batcher = SequenceBatcher("m", pool, batch_size, 5.0, 1000, 5.0,  # type: ignore[arg-type]
                              max_idle_ms=max_idle_ms, timeout_ms=timeout_ms,
                              max_sequences=max_sequences, max_queued=max_queued)
    pool.batcher = batcher
    pool.workers = [StatefulWorker(pool, compute_s) for _ in range(workers)]
    pool.target = workers
    batcher.start()
    return batcher, pool


def job(body: str | int, sequence: str | None = None) -> Job:
    headers = {SEQUENCE_ID: sequence} if sequence else {}
    return Job(str(body), "text/plain", str(body).encode(), headers,
               asyncio.get_running_loop().create_future())


async def answer(j: Job) -> str:
    return (await asyncio.wait_for(j.future, 5)).body.decode()


async def until(check, timeout: float = 5.0) -> None:
    """Wait for ``check()`` to hold (the batcher sweeps on its own time)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_each_sequence_stays_on_one_worker_and_keeps_its_state():
    batcher, pool = make(workers=2)

    async def client(sid: str, numbers: list[int]) -> list[str]:
        out = []
        for n in numbers:
            j = job(n, sid)
            batcher.submit(j)
            out.append(await answer(j))
        return out

    results = await asyncio.gather(*(client(f"seq_{k}", [1, 2, 3, 4, 5]) for k in range(4)))
    assert results == [["1", "3", "6", "10", "15"]] * 4
    seen = [{sid for batch in w.batches for sid in batch} for w in pool.workers]
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == {f"seq_{k}" for k in range(4)}
    assert all(seen), "the sequences are spread over both workers"


async def test_a_sequences_requests_run_one_at_a_time_in_order():
    batcher, pool = make(workers=1, batch_size=8)
    jobs = [job(n, "s") for n in (1, 10, 100)] + [job(5, "t")]
    for j in jobs:
        batcher.submit(j)
    assert [await answer(j) for j in jobs] == ["1", "11", "111", "5"]
    assert all(batch.count("s") <= 1 for batch in pool.workers[0].batches)
    assert pool.workers[0].batches[0] == ["s", "t"]  # other sequences share its batches


async def test_a_request_without_an_id_opens_a_named_sequence():
    batcher, _ = make()
    j = job(7)
    batcher.submit(j)
    assert await answer(j) == "7"
    assert j.sequence.startswith("ts-seq-") and j.headers[SEQUENCE_ID] == j.sequence
    assert j.headers[SEQUENCE_START] == "true"
    again = job(1, j.sequence)
    batcher.submit(again)
    assert await answer(again) == "8"
    assert SEQUENCE_START not in again.headers


async def test_too_many_sequences_or_queued_requests_are_refused_with_503():
    batcher, _ = make(workers=1, max_sequences=1, max_queued=2, compute_s=0.2)
    first, second = job(1, "a"), job(2, "a")
    batcher.submit(first)
    batcher.submit(second)
    await until(lambda: batcher.sequences["a"].running is not None)
    batcher.submit(job(3, "a"))  # one running, two queued: the queue's limit
    assert batcher.queued == 2 and not batcher.pending
    with pytest.raises(ServiceUnavailableError, match="exceeds maxSequenceJobQueueSize") as exc:
        batcher.submit(job(4, "a"))
    assert exc.value.status == 503
    with pytest.raises(ServiceUnavailableError, match='Model "m" has no worker'):
        batcher.submit(job(1, "b"))  # maxNumSequence 1
    assert await answer(second) == "3"


async def test_an_idle_sequence_closes_frees_its_place_and_is_not_reopened():
    batcher, pool = make(workers=1, max_sequences=1, max_idle_ms=100)
    a = job(4, "a")
    batcher.submit(a)
    assert await answer(a) == "4"
    with pytest.raises(ServiceUnavailableError):
        batcher.submit(job(1, "b"))
    await until(lambda: not batcher.sequences)  # closed after 100 ms idle
    b = job(1, "b")
    batcher.submit(b)
    assert await answer(b) == "1"
    with pytest.raises(ServiceUnavailableError, match="closed, or expired"):
        batcher.submit(job(1, "a"))


async def test_closed_ids_are_remembered_up_to_a_bound(monkeypatch):
    monkeypatch.setattr(sequences, "CLOSED_KEPT", 2)
    batcher, _ = make(workers=1)
    for sid in ("a", "b", "c"):
        j = job(0, sid)
        batcher.submit(j)
        await answer(j)
        batcher._close(sid)
    assert list(batcher.closed) == ["b", "c"]
    again = job(2, "a")  # forgotten: opened again
    batcher.submit(again)
    assert await answer(again) == "2"


async def test_the_session_timeout_closes_a_sequence_once_it_is_idle():
    batcher, _ = make(workers=1, max_idle_ms=60_000, timeout_ms=150)
    a = job(1, "a")
    batcher.submit(a)
    assert await answer(a) == "1"
    assert "a" in batcher.sequences
    await until(lambda: "a" not in batcher.sequences)
    assert "a" in batcher.closed


async def test_the_handler_ends_a_sequence_and_its_queued_requests_fail():
    batcher, _ = make(workers=1, max_sequences=1, compute_s=0.05)
    end, after = job("end", "a"), job(1, "a")
    batcher.submit(end)
    batcher.submit(after)
    assert await answer(end) == "bye"
    with pytest.raises(ServiceUnavailableError, match="ended before this request ran"):
        await answer(after)
    assert not batcher.sequences
    b = job(2, "b")  # its place is free again
    batcher.submit(b)
    assert await answer(b) == "2"
    with pytest.raises(ServiceUnavailableError, match="closed, or expired"):
        batcher.submit(job(1, "a"))


async def test_a_dead_workers_requests_move_with_their_sequence():
    batcher, pool = make(workers=2, compute_s=0.3)
    j = job(1, "a")
    batcher.submit(j)
    await until(lambda: batcher.sequences["a"].running is j)
    owner = batcher.sequences["a"].worker
    batcher.requeue(owner.die())  # type: ignore[union-attr]
    assert await answer(j) == "1"  # run again on the other worker
    (survivor,) = pool.workers
    assert batcher.sequences["a"].worker is survivor
    nxt = job(2, "a")
    batcher.submit(nxt)
    assert await answer(nxt) == "3"


async def test_closing_fails_what_waits():
    batcher, _ = make(workers=1, compute_s=0.3)
    running, queued = job(1, "a"), job(2, "a")
    batcher.submit(running)
    batcher.submit(queued)
    await until(lambda: batcher.sequences["a"].running is running)
    await batcher.close(ServiceUnavailableError("unregistered"))
    with pytest.raises(ServiceUnavailableError, match="unregistered"):
        await answer(queued)
    with pytest.raises(ServiceUnavailableError, match="unregistered"):
        batcher.submit(job(3, "a"))
