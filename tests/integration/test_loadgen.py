"""The benchmark's own open-loop generator (bench/loadgen.py): a fixed rate loses no request."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import loadgen  # noqa: E402

IDLE_S = 0.1  # the server closes a keep-alive connection idle this long (uvicorn's is 5 s)


async def _keepalive_server() -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_S)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (TimeoutError, asyncio.IncompleteReadError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_open_loop_answers_every_request_when_idle_connections_are_closed():
    async def run() -> loadgen.LoadResult:
        server = await _keepalive_server()
        port = server.sockets[0].getsockname()[1]
        request = loadgen.build_request("127.0.0.1", port, "POST", "/", b"{}")
        async with server:
            # 16 connections at 40/s: each sits idle ~0.4 s between requests, past IDLE_S
            return await loadgen.open_loop("127.0.0.1", port, request, 40, 1.5, connections=16)

    result = asyncio.run(run())
    # 60 due in 1.5 s (59 if the loop stalled at the end); none lost, none left undispatched
    assert result.statuses.keys() == {200, 0} and result.statuses[0] == 0
    assert result.ok >= 59, result.statuses
    assert result.duration_s < 5  # nothing waited for the 30 s drain deadline
