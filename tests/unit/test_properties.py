"""Property tests (hypothesis): the IPC framing and the batcher."""

from __future__ import annotations

import asyncio
import socket
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelserve import ipc
from modelserve.server.engine.batching import Batcher
from modelserve.server.engine.jobs import Job
from tests.unit.test_batching import FakePool, FakeWorker

# -- IPC framing -----------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=50) | st.binary(max_size=200))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=20,
)
messages = st.dictionaries(st.text(max_size=10), values, max_size=6)


async def _read_all(chunks: list[bytes]) -> tuple[list[dict], BaseException | None]:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    out: list[dict] = []
    try:
        while (msg := await ipc.read_frame(reader)) is not None:
            out.append(msg)
    except ipc.FrameError as exc:
        return out, exc
    return out, None


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=150, deadline=None)
@given(st.lists(messages, max_size=8), st.lists(st.integers(0, 10**6), max_size=12))
def test_frames_round_trip_however_the_stream_is_cut(msgs, cuts):
    stream = b"".join(ipc.encode(m) for m in msgs)
    out, err = asyncio.run(_read_all(_split(stream, cuts)))
    assert err is None
    assert out == msgs


@settings(max_examples=100, deadline=None)
@given(st.lists(messages, min_size=1, max_size=6), st.integers(0, 10**6))
def test_a_truncated_stream_gives_whole_frames_then_an_error_or_a_clean_end(msgs, cut):
    frames = [ipc.encode(m) for m in msgs]
    stream = b"".join(frames)
    cut %= len(stream)
    out, err = asyncio.run(_read_all([stream[:cut]]))
    ends, total = [], 0
    for frame in frames:
        total += len(frame)
        ends.append(total)
    whole = sum(1 for end in ends if end <= cut)
    assert out == msgs[:whole]
    assert (err is None) == (cut in (0, *ends))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_a_frame_error_never_another_exception(data):
    out, err = asyncio.run(_read_all([data]))
    assert all(isinstance(m, dict) for m in out)
    assert err is None or isinstance(err, ipc.FrameError)


@settings(max_examples=50, deadline=None)
@given(st.lists(messages, max_size=6))
def test_blocking_reader_reads_what_encode_writes(msgs):
    a, b = socket.socketpair()
    try:
        writer = threading.Thread(target=lambda: (a.sendall(b"".join(map(ipc.encode, msgs))),
                                                  a.shutdown(socket.SHUT_WR)))
        writer.start()
        out = []
        while (msg := ipc.recv_frame(b)) is not None:
            out.append(msg)
        writer.join()
    finally:
        a.close()
        b.close()
    assert out == msgs


# -- batcher ---------------------------------------------------------------------------------

async def _run_batcher(batch_size: int, workers: int, delay_ms: float,
                       plan: list[tuple[float, bool]]) -> None:
    pool = FakePool()
    batcher = Batcher("m", pool, batch_size, delay_ms, 10_000, queue_timeout_s=30)  # type: ignore[arg-type]
    pool.batcher = batcher
    sent: list[list[Job]] = []

    class Recording(FakeWorker):
        def send(self, jobs: list[Job]) -> None:
            sent.append(list(jobs))
            super().send(jobs)

    pool.workers = [Recording(pool, 0.002) for _ in range(workers)]
    pool.target = workers
    batcher.start()
    loop = asyncio.get_running_loop()
    jobs: list[Job] = []
    for i, (gap, cancel) in enumerate(plan):
        if gap:
            await asyncio.sleep(gap)
        job = Job(str(i), "text/plain", str(i).encode(), {}, loop.create_future())
        batcher.submit(job)
        if cancel:
            job.future.cancel()  # the client went away before dispatch
        jobs.append(job)
    live = [j for j in jobs if not j.future.cancelled()]
    await asyncio.wait_for(asyncio.gather(*(j.future for j in live)), 20)
    await batcher.close(RuntimeError("closed"))
    for w in pool.workers:
        w._task.cancel()

    flat = [j for batch in sent for j in batch]
    assert all(1 <= len(batch) <= batch_size for batch in sent)
    # every live job sent exactly once, answered with its own body, in arrival order
    assert len({id(j) for j in flat}) == len(flat)
    assert [j for j in flat if not j.future.cancelled()] == live
    assert [j.request_id for j in flat] == sorted((j.request_id for j in flat), key=int)
    for j in live:
        assert j.future.result().body == j.body


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 8), st.integers(1, 3), st.sampled_from([0.0, 1.0, 5.0]),
       st.lists(st.tuples(st.sampled_from([0.0, 0.0, 0.0, 0.001, 0.003]),
                          st.integers(0, 9).map(lambda n: n == 0)),  # ~10% cancelled
                max_size=40))
def test_batcher_answers_every_job_once_in_order_within_batch_size(batch, workers, delay, plan):
    asyncio.run(_run_batcher(batch, workers, delay, plan))
