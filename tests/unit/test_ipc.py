"""IPC frames: both sides of the socket agree, and broken frames are errors, not hangs."""

from __future__ import annotations

import asyncio
import socket

import pytest

from modelserve import ipc

MESSAGES = [
    {"op": "infer", "id": 1, "reqs": [["r1", "application/json", b"[1,2]", {"a": "b"}]]},
    {"op": "result", "id": 1, "out": [[200, "application/json", b"{}", {}]], "ms": 1.5},
    {"op": "stop"},
    {"op": "infer", "id": 2, "reqs": [["big", "", b"\x00" * 3_000_000, {}]]},
]


def test_blocking_round_trip():
    a, b = socket.socketpair()
    with a, b:
        for message in MESSAGES[:3]:
            a.sendall(ipc.encode(message))
            assert ipc.recv_frame(b) == message
        a.close()
        assert ipc.recv_frame(b) is None  # clean end of stream


async def test_async_reader_reads_what_the_blocking_side_writes():
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=a)

    def write_all():
        for message in MESSAGES:
            b.sendall(ipc.encode(message))
        b.close()

    sender = asyncio.get_running_loop().run_in_executor(None, write_all)
    got = [await ipc.read_frame(reader) for _ in MESSAGES]
    await sender
    assert got == MESSAGES
    assert await ipc.read_frame(reader) is None
    writer.close()


async def test_truncated_frame_is_an_error():
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=a)
    frame = ipc.encode(MESSAGES[0])
    b.sendall(frame[:-3])
    b.close()
    with pytest.raises(ipc.FrameError):
        await ipc.read_frame(reader)
    writer.close()


def test_oversized_length_is_refused():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(ipc.HEADER.pack(ipc.MAX_FRAME + 1))
        with pytest.raises(ipc.FrameError, match="exceeds"):
            ipc.recv_frame(b)


async def test_a_request_the_frame_cannot_carry_fails_alone_and_the_batch_goes_on():
    """Defence behind the input checks: a job msgpack refuses (nesting past its limit, an
    integer past 64 bits) gets a 400 at once; the others of its batch are sent; nothing is
    left in flight without an answer or a timer."""
    from modelserve.errors import BadRequestError
    from modelserve.server.engine.jobs import Job
    from modelserve.server.engine.worker_spec import WorkerSpec
    from modelserve.server.engine.workers import WorkerProcess

    class Writer:
        frames: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.frames.append(data)

    spec = WorkerSpec("m", "1", "/nonexistent", "h.py", (), {}, {}, 8, "cpu", 10, 10, 2)
    worker = WorkerProcess(spec, 0, 1, on_change=lambda: None, on_exit=lambda w: None)
    worker._writer = Writer()  # type: ignore[assignment]
    loop = asyncio.get_running_loop()

    def job(v2: dict | None) -> Job:
        return Job("r", "application/json", b"{}", {}, loop.create_future(), v2=v2)

    nested: list = []
    for _ in range(1100):  # msgpack stops at ~1024 levels
        nested = [nested]
    good, deep, huge = job(None), job({"parameters": {"x": nested}}), job({"n": 2 ** 70})
    worker.send([good, deep, huge])
    for bad in (deep, huge):
        with pytest.raises(BadRequestError, match="cannot be passed to the worker"):
            await bad.future
    [frame] = Writer.frames
    message = ipc.decode(frame[ipc.HEADER.size:])
    assert len(message["reqs"]) == 1 and list(worker.inflight.values()) == [[good]]
    assert len(worker._timers) == 1

    worker.send([job({"x": nested})])  # a batch with nothing left to send
    assert len(Writer.frames) == 1 and len(worker.inflight) == 1
    for timer in worker._timers.values():
        timer.cancel()


def test_handler_metrics_with_non_string_dimensions_can_be_framed():
    """A handler's ``Dimension(1, 2)`` used to make the result frame undecodable (msgpack
    refuses int map keys), which killed the worker on every request."""
    from modelserve.worker.metrics import Dimension, MetricsCache

    cache = MetricsCache("m")
    cache.add_metric("m", 1, dimensions=[Dimension(1, 2)])  # type: ignore[arg-type]
    frame = ipc.encode({"op": "result", "id": 1, "out": [], "ms": 0.0,
                        "metrics": cache.drain()})
    [event] = ipc.decode(frame[ipc.HEADER.size:])["metrics"]
    assert event[3]["1"] == "2"

