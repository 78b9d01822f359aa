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
        return len(self.latencies_s) / self.duration_s

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


async def _connection(host: str, port: int, request: bytes, stop_at: float,
                      result: LoadResult) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    latencies = result.latencies_s
    statuses = result.statuses
    try:
        while (now := time.perf_counter()) < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            # "\r\n" first: not Inference-Header-Content-Length (OIP v2 binary responses)
            start = lower.index(b"\r\ncontent-length:")
            end = lower.index(b"\r\n", start + 2)
            await reader.readexactly(int(lower[start + 17:end]))
            latencies.append(time.perf_counter() - now)
            statuses[status] = statuses.get(status, 0) + 1
            if b"connection: close" in lower:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
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
