"""Client connections under a descriptor budget.

Every client connection holds a file descriptor, and so does every worker socket, pipe,
archive being extracted and log file. Left alone, 1,000 slow clients take them all: workers
then fail to start (EMFILE) and nobody is served. So at start the soft RLIMIT_NOFILE is raised
to the hard limit, and the HTTP listeners together keep at most ``max_connections`` client
connections (default: the limit less a reserve for everything else). At the cap a new
connection makes room before it is refused: the connection that has waited longest for its
request head is closed (503), else the longest-idle keep-alive one; only when every
connection is busy with a request is the new one refused (503, closed at once).
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("modelserve.http")

RESERVE_MIN = 64  # descriptors never given to clients: listeners, zygote, logs, gRPC
RESERVE_MAX = 4096
NOTICE_EVERY_S = 10.0  # at most one log line per this many seconds for each kind of event


class Tracked(Protocol):
    """What the table needs of a connection (deadlines.ConnectionWatch)."""

    listener: str

    def evict(self, limit: int) -> None: ...


def raise_descriptor_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one: (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. above fs.nr_open, or macOS's OPEN_MAX
            log.warning("could not raise the descriptor limit from %d to %d: %s",
                        soft, target, exc)
            return soft, soft, hard
    return soft, max(soft, target), hard


def reserve(limit: int) -> int:
    """Descriptors the HTTP listeners leave to everything else: RESERVE_MIN and a quarter
    of the limit, at most RESERVE_MAX."""
    return min(RESERVE_MIN + limit // 4, RESERVE_MAX)


def default_max_connections(limit: int) -> int:
    """Client connections a descriptor limit affords: it less the reserve for worker
    sockets and pipes, archives, logs and the gRPC and other listeners."""
    return max(16, limit - reserve(limit))


def default_grpc_connections(limit: int) -> int:
    """Client connections of one gRPC listener: an eighth of the reserve (at most three
    such listeners take three eighths), at least 16."""
    return max(16, reserve(limit) // 8)


class _Notice:
    """Rate-limited warning: the first event at once, then counts every NOTICE_EVERY_S."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pending = 0
        self.last = 0.0

    def __call__(self) -> None:
        self.pending += 1
        now = time.monotonic()
        if now - self.last >= NOTICE_EVERY_S:
            log.warning(self.text, self.pending)
            self.pending, self.last = 0, now


class ConnectionTable:
    """The open client connections of every HTTP listener, by state, oldest first.

    A connection is in at most one of ``waiting`` (no whole request head yet) and ``idle``
    (kept alive between requests); one busy with a request is in neither. Dicts keep
    insertion order, so the first key is the one longest in its state."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[str] = Counter()  # by listener
        self.waiting: dict[Tracked, None] = {}
        self.idle: dict[Tracked, None] = {}
        self._members: set[Tracked] = set()
        self.timeouts: Counter[tuple[str, str]] = Counter()  # (listener, head|body)
        self.evicted: Counter[tuple[str, str]] = Counter()  # (listener, waiting|idle)
        self.refused: Counter[str] = Counter()
        self._evict_notice = _Notice(
            f"max_connections ({limit}) reached: closed %d slow or idle connection(s) to "
            "make room for new ones")
        self._refuse_notice = _Notice(
            f"max_connections ({limit}) reached with every connection busy: refused %d new "
            "connection(s) with 503")
        self.timeout_notice = _Notice(
            "closed %d connection(s) that did not send their request in time "
            "(request_header_timeout / request_body_timeout)")

    def admit(self, conn: Tracked) -> bool:
        """Count a new connection in, closing another first at the cap; False: refuse it."""
        if len(self._members) >= self.limit:
            for pool, state in ((self.waiting, "waiting"), (self.idle, "idle")):
                if pool:
                    victim = next(iter(pool))
                    self.release(victim)
                    self.evicted[victim.listener, state] += 1
                    self._evict_notice()
                    victim.evict(self.limit)
                    break
            else:
                self.refused[conn.listener] += 1
                self._refuse_notice()
                return False
        self._members.add(conn)
        self.open[conn.listener] += 1
        self.waiting[conn] = None
        return True

    def place(self, conn: Tracked, state: str) -> None:
        """Move a counted connection to ``state``: waiting, idle or busy (moved last in its
        state's order even when it was already there: its wait began again)."""
        if conn not in self._members:
            return
        self.waiting.pop(conn, None)
        self.idle.pop(conn, None)
        if state == "waiting":
            self.waiting[conn] = None
        elif state == "idle":
            self.idle[conn] = None

    def release(self, conn: Tracked) -> None:
        """Count a connection out (closed, evicted or upgraded); twice is harmless."""
        if conn in self._members:
            self._members.discard(conn)
            self.open[conn.listener] -= 1
            self.waiting.pop(conn, None)
            self.idle.pop(conn, None)


class ConnectionMetrics(Collector):
    """The table's state and counters at scrape time (the request path pays nothing)."""

    def __init__(self, table: ConnectionTable) -> None:
        self.table = table

    def collect(self) -> Iterator[Metric]:
        t = self.table
        open_ = GaugeMetricFamily("modelserve_http_connections",
                                  "Open client connections, per HTTP listener.",
                                  labels=["listener"])
        for listener, n in sorted(t.open.items()):
            open_.add_metric([listener], n)
        yield open_
        yield GaugeMetricFamily("modelserve_http_max_connections",
                                "Client connections the HTTP listeners keep at most "
                                "(max_connections).", value=t.limit)
        timeouts = CounterMetricFamily(
            "modelserve_http_request_timeouts",
            "Connections closed because their request head (request_header_timeout) or body "
            "(request_body_timeout) did not arrive in time.", labels=["listener", "phase"])
        for (listener, phase), n in sorted(t.timeouts.items()):
            timeouts.add_metric([listener, phase], n)
        yield timeouts
        evicted = CounterMetricFamily(
            "modelserve_http_connections_evicted",
            "Connections closed at max_connections to make room for a new one: waiting for a "
            "request head, or idle between requests.", labels=["listener", "state"])
        for (listener, state), n in sorted(t.evicted.items()):
            evicted.add_metric([listener, state], n)
        yield evicted
        refused = CounterMetricFamily(
            "modelserve_http_connections_refused",
            "New connections refused (503) at max_connections, every open one busy.",
            labels=["listener"])
        for listener, n in sorted(t.refused.items()):
            refused.add_metric([listener], n)
        yield refused


def open_table(max_connections: int | None) -> ConnectionTable:
    """At start: raise the descriptor limit, log it, and size the connection cap."""
    before, soft, hard = raise_descriptor_limit()
    limit = max_connections or default_max_connections(soft)
    log.info("descriptor limit: soft %d (raised from %d), hard %d; max_connections %d",
             soft, before, hard, limit)
    if limit > soft - RESERVE_MIN:
        log.warning("max_connections (%d) leaves fewer than %d of the %d descriptors to "
                    "workers, archives and logs: clients can starve them", limit,
                    RESERVE_MIN, soft)
    return ConnectionTable(limit)
