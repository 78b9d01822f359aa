"""Soak / overload: open-loop load at a multiple of measured capacity; errors and RSS over time.

1. Starts a server (token auth off) with one model and measures its capacity closed-loop.
2. Offers ``--factor`` x that rate open-loop (requests leave on schedule, answered or not)
   for ``--duration`` seconds, and every ``--window`` seconds prints the answers by status,
   the p50/p99 latency of the 200s, and the resident memory of the server and its workers.
3. Checks that memory stayed bounded (the queue is bounded: ``job_queue_size``), that every
   request was answered (200, or 503 with Retry-After when the queue is full), and that the
   server still serves afterwards. With ``--client-timeout`` clients give up (close the
   connection) after that many seconds; ``goodput_rps`` counts the answers they still got.

    python bench/soak.py --model-store model_store --factor 2 --duration 300   # soak
    python bench/soak.py --model-store model_store --factor 10 --duration 60   # overload
    python bench/soak.py --model-store model_store --factor 2 --duration 30 --client-timeout 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import build_request, closed_loop  # noqa: E402
from serve_bench import HOST, ServerUnderTest, bodies, descendants, rss_mb  # noqa: E402


class OpenLoop:
    """Sends on schedule over a pool of keep-alive connections (a new one when all are
    busy, up to ``max_connections``; past that a request counts as ``client_backlog``)."""

    def __init__(self, port: int, request: bytes, max_connections: int,
                 client_timeout: float | None = None) -> None:
        self.port = port
        self.client_timeout = client_timeout
        self.request = request
        self.max_connections = max_connections
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.statuses: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []
        self.retry_after_missing = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def _one(self) -> None:
        """One request; a client with a timeout gives up after it (closes its connection,
        as HTTP clients do) and counts ``client_timeout``."""
        if self.client_timeout is None:
            await self._exchange()
            return
        try:
            await asyncio.wait_for(self._exchange(), self.client_timeout)
        except TimeoutError:
            self.open -= 1  # its connection was closed with the cancelled exchange
            self.statuses["client_timeout"] += 1

    async def _exchange(self) -> None:
        start = time.perf_counter()
        writer = None
        try:
            if self.idle:
                reader, writer = self.idle.pop()
                writer.write(self.request)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                        raise
                    # the server closed this idle keep-alive connection (its keep-alive
                    # timeout) before reading the request: send it again on a new one,
                    # as HTTP clients do
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, self.port)
                    writer.write(self.request)
                    head = await reader.readuntil(b"\r\n\r\n")
            else:
                self.open += 1
                reader, writer = await asyncio.open_connection(HOST, self.port)
                writer.write(self.request)
                head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            i = lower.index(b"content-length:")
            await reader.readexactly(int(lower[i + 15:lower.index(b"\r\n", i)]))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.open -= 1
            self.statuses[f"conn_error:{type(exc).__name__}"] += 1
            return
        except asyncio.CancelledError:
            if writer is not None:
                writer.close()
            raise
        self.statuses[str(status)] += 1
        if status == 200:
            self.latencies.append(time.perf_counter() - start)
        elif status == 503 and b"retry-after:" not in lower:
            self.retry_after_missing += 1
        if b"connection: close" in lower:
            writer.close()
            self.open -= 1
        else:
            self.idle.append((reader, writer))

    def send(self) -> None:
        if not self.idle and self.open >= self.max_connections:
            self.statuses["client_backlog"] += 1
            return
        task = asyncio.create_task(self._one())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def take_window(self) -> tuple[dict[str, int], list[float]]:
        statuses, latencies = dict(self.statuses), self.latencies
        self.statuses, self.latencies = collections.Counter(), []
        return statuses, latencies


def server_rss(pid: int) -> tuple[float, float]:
    """(frontend MB, workers MB)."""
    return rss_mb(pid), sum(rss_mb(c) for c in descendants(pid))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def soak(port: int, pid: int, request: bytes, rate: float, duration: float,
               window: float, max_connections: int,
               client_timeout: float | None = None) -> list[dict]:
    load = OpenLoop(port, request, max_connections, client_timeout)
    rows: list[dict] = []
    start = time.perf_counter()
    sent = 0
    next_window = start + window
    peak = (0.0, 0.0)
    while (now := time.perf_counter()) < start + duration:
        due = int((now - start) * rate) - sent
        for _ in range(due):
            load.send()
        sent += max(0, due)
        front, workers = server_rss(pid) if int(now * 10) % 5 == 0 else peak
        peak = (max(peak[0], front), max(peak[1], workers))
        if now >= next_window:
            statuses, lat = load.take_window()
            front, workers = server_rss(pid)
            rows.append({"t_s": round(now - start), "offered_rps": round(rate),
                         "statuses": statuses, "p50_ms": round(pct(lat, 50), 1),
                         "p99_ms": round(pct(lat, 99), 1), "connections": load.open,
                         "frontend_mb": round(front, 1), "workers_mb": round(workers, 1),
                         "peak_frontend_mb": round(peak[0], 1)})
            print(json.dumps(rows[-1]), flush=True)
            next_window += window
        await asyncio.sleep(0.005)
    # let the last requests finish (each is answered: 200, 503, or 504 at response_timeout)
    if load.tasks:
        await asyncio.wait(load.tasks, timeout=60)
    statuses, lat = load.take_window()
    front, workers = server_rss(pid)
    rows.append({"t_s": round(time.perf_counter() - start), "offered_rps": 0,
                 "statuses": statuses, "p50_ms": round(pct(lat, 50), 1),
                 "p99_ms": round(pct(lat, 99), 1), "unanswered": len(load.tasks),
                 "retry_after_missing": load.retry_after_missing,
                 "frontend_mb": round(front, 1), "workers_mb": round(workers, 1)})
    print(json.dumps(rows[-1]), flush=True)
    for _, writer in load.idle:
        writer.close()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-store", type=Path, default=Path("model_store"))
    p.add_argument("--model", default="resnet", choices=["digits", "resnet"])
    p.add_argument("--factor", type=float, default=2.0, help="offered load / capacity")
    p.add_argument("--duration", type=float, default=300.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--calibrate", type=float, default=5.0, help="seconds of capacity test")
    p.add_argument("--max-connections", type=int, default=2000)
    p.add_argument("--job-queue-size", type=int, default=100,
                   help="the server's bounded queue (TorchServe's default: 100)")
    p.add_argument("--client-timeout", type=float, default=None,
                   help="clients give up on a request after this many seconds and close "
                        "its connection (impatient clients under overload)")
    args = p.parse_args()

    body, ctype = bodies(args.model)["npy" if args.model == "resnet" else "json"]
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerUnderTest(args.model_store.resolve(), args.model, Path(tmp),
                                 {"job_queue_size": args.job_queue_size})
        try:
            port, pid = server.ports[0], server.proc.pid
            request = build_request(HOST, port, "POST", f"/predictions/{args.model}", body,
                                    ctype)
            idle = server_rss(pid)
            cap = asyncio.run(closed_loop(HOST, port, request, 16, args.calibrate))
            capacity = cap.rps
            print(json.dumps({"capacity_rps": round(capacity, 1), "idle_frontend_mb":
                              round(idle[0], 1), "idle_workers_mb": round(idle[1], 1)}))
            rows = asyncio.run(soak(port, pid, request, capacity * args.factor, args.duration,
                                    args.window, args.max_connections,
                                    args.client_timeout))
            after = asyncio.run(closed_loop(HOST, port, request, 4, 2.0, warmup_s=0))
        finally:
            server.stop()
    total: collections.Counter[str] = collections.Counter()
    for row in rows:
        total.update(row["statuses"])
    peak = max(r.get("peak_frontend_mb", r["frontend_mb"]) for r in rows)
    summary = {"model": args.model, "factor": args.factor, "duration_s": args.duration,
               "job_queue_size": args.job_queue_size,
               "capacity_rps": round(capacity, 1), "statuses": dict(total),
               "goodput_rps": round(total["200"] / args.duration, 1),
               "unanswered": rows[-1]["unanswered"],
               "retry_after_missing": rows[-1]["retry_after_missing"],
               "frontend_mb_idle": round(idle[0], 1), "frontend_mb_peak": peak,
               "frontend_mb_end": rows[-1]["frontend_mb"],
               "workers_mb_idle": round(idle[1], 1),
               "workers_mb_end": rows[-1]["workers_mb"],
               "served_after_rps": round(after.rps, 1), "served_after_ok": after.ok}
    print(json.dumps({"summary": summary}, indent=2))
    expected = ("200", "503", "client_timeout") if args.client_timeout else ("200", "503")
    bad = [s for s in total if s not in expected]
    return 1 if bad or summary["unanswered"] or not after.ok else 0


if __name__ == "__main__":
    raise SystemExit(main())
