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
