"""A small closed-loop HTTP/1.1 load generator (keep-alive, pre-encoded request, uvloop).

It does little per request (one write, a header scan, one read of Content-Length bytes) so
that on a small machine the server, not the client, is what gets measured; ``serve_bench.py``
prints its ceiling against ``/ping`` to show that.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != 200)

    @property
    def rps(self) -> float:
        """Answers with status 200 per second: a refused request is not throughput."""
        return self.ok / self.duration_s

    def percentile(self, p: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def build_request(host: str, port: int, method: str, path: str, body: bytes = b"",
                  content_type: str = "application/json") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[int, bool]:
    """Send one request, read its response; returns (status, whether the server closes)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    # "\r\n" first: not Inference-Header-Content-Length (OIP v2 binary responses)
    start = lower.index(b"\r\ncontent-length:")
    end = lower.index(b"\r\n", start + 2)
    await reader.readexactly(int(lower[start + 17:end]))
    return int(head[9:12]), b"connection: close" in lower


async def _reopen(writer: asyncio.StreamWriter, host: str,
                  port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Close a connection the server ended and open its replacement."""
    writer.close()
    return await asyncio.open_connection(host, port)


async def _connection(host: str, port: int, request: bytes, stop_at: float,
                      result: LoadResult) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    latencies = result.latencies_s
    statuses = result.statuses
    try:
        while (now := time.perf_counter()) < stop_at:
            status, closes = await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - now)
            statuses[status] = statuses.get(status, 0) + 1
            if closes:
                reader, writer = await _reopen(writer, host, port)
    finally:
        writer.close()


async def closed_loop(host: str, port: int, request: bytes, concurrency: int,
                      duration_s: float, warmup_s: float = 1.0) -> LoadResult:
    """``concurrency`` connections, each sending its next request when the last is answered."""
    if warmup_s > 0:
        await closed_loop(host, port, request, concurrency, warmup_s, warmup_s=0)
    result = LoadResult(concurrency, duration_s)
    start = time.perf_counter()
    stop_at = start + duration_s
    await asyncio.gather(*(_connection(host, port, request, stop_at, result)
                           for _ in range(concurrency)))
    result.duration_s = time.perf_counter() - start
    return result


async def open_loop(host: str, port: int, request: bytes, rate: float, duration_s: float,
                    connections: int = 256) -> LoadResult:
    """Fixed arrival rate, whatever the server does: the i-th request is due at i / rate.

    Latency counts from when a request was due, not from when a connection was free to send
    it, so a server that falls behind shows its queueing (no coordinated omission). Requests
    still undispatched when the run ends are counted under status 0.
    """
    result = LoadResult(concurrency=connections, duration_s=duration_s)
    due: asyncio.Queue[float] = asyncio.Queue()
    streams = await asyncio.gather(*(asyncio.open_connection(host, port)
                                     for _ in range(connections)))
    start = time.perf_counter()
    stop_at = start + duration_s

    async def sender(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                scheduled = await due.get()
                try:
                    status, closes = await _exchange(reader, writer, request)
                except (asyncio.IncompleteReadError, ConnectionError):
                    # at low rates a connection sits idle past the server's keep-alive
                    # timeout and is closed: send again on a new one, as HTTP clients do
                    reader, writer = await _reopen(writer, host, port)
                    status, closes = await _exchange(reader, writer, request)
                result.latencies_s.append(time.perf_counter() - scheduled)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if closes:
                    reader, writer = await _reopen(writer, host, port)
        finally:
            writer.close()

    senders = [asyncio.create_task(sender(r, w)) for r, w in streams]
    sent = 0
    while (now := time.perf_counter()) < stop_at:
        while start + sent / rate <= now:
            due.put_nowait(start + sent / rate)
            sent += 1
        await asyncio.sleep(min(0.001, max(0.0, start + sent / rate - now)))
    deadline = time.perf_counter() + 30
    while len(result.latencies_s) < sent - due.qsize() and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)  # let requests in flight finish
    result.statuses[0] = due.qsize()
    for task in senders:
        task.cancel()
    await asyncio.gather(*senders, return_exceptions=True)
    result.duration_s = time.perf_counter() - start
    return result
