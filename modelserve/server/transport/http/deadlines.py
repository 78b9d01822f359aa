"""Deadlines for receiving a request, at the protocol layer (ASGI middleware runs only once a
whole head has arrived: too late for a client that never finishes one).

uvicorn waits forever for a request head, and for a body that stalls. Here each connection
has one timer: from the connection's first moment (or the first byte of a later request on
a kept-alive connection) the head must be whole within ``request_header_timeout``; then the
body must not pause longer than ``request_body_timeout`` between two reads (nginx's
client_header_timeout and client_body_timeout). A client past either gets 408 (when no
response has begun) and is closed; the access log and
``modelserve_http_request_timeouts_total`` record it. The deadline covers receipt only: the
timer stops once the request is in, so long inferences and streamed answers are untouched,
and a body the application is not reading yet (uvicorn paused the socket, or the client
waits for its 100 Continue) never times out.

The same watch keeps the connection's state in the listeners' ConnectionTable (waiting for a
head, busy, idle), which the connection cap evicts by. One subclass per uvicorn protocol
(httptools, h11) feeds it the parser's events.
"""

from __future__ import annotations

import asyncio
import http
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelserve.server.transport.http.access_log import STATUS_KEY, torchserve_line
from modelserve.server.transport.http.access_log import log as access_log
from modelserve.server.transport.http.coalesce import CoalescingTransport
from modelserve.server.transport.http.connections import ConnectionTable


@dataclass(frozen=True)
class Guard:
    """What the connections of one listener share."""

    listener: str  # inference, management or metrics
    table: ConnectionTable  # shared by every listener: one descriptor budget
    header_timeout: float
    body_timeout: float
    access_style: str | None = None  # json or torchserve; None: the access log is off


class ConnectionWatch:
    """One connection's request-receipt deadline and its state in the table."""

    def __init__(self, proto: Any, guard: Guard) -> None:
        self.proto = proto  # the uvicorn protocol: transport, loop, cycle, flow, client
        self.guard = guard
        self.table = guard.table
        self.listener = guard.listener
        self.loop: asyncio.AbstractEventLoop = proto.loop
        self.head_since: float | None = self.loop.time()  # a head is awaited since then
        self.body_at: float | None = None  # a body is arriving; its last bytes came then
        self.requests = 0  # heads received whose response is not complete
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._closed = False
        self._app_was_idle = False  # the last expiry found the application not reading

    # -- events from the protocol ------------------------------------------------------------
    def start(self) -> None:
        """The connection is made: count it in (the table may close another, or refuse it)."""
        if self.guard.table.admit(self):
            self._arm()
        else:
            self._answer(503, "ServiceUnavailableException",
                         f"the server is at max_connections ({self.guard.table.limit}), every "
                         "connection busy; retry later", 0.0)

    def received(self) -> None:
        """After the parser ran over new bytes: a body moved on, or an idle connection began
        a request."""
        if self._closed:
            return
        if self.body_at is not None:
            self.body_at = self.loop.time()
            self._app_was_idle = False
        elif self.head_since is None:
            if self.requests:  # busy, and nothing to time: the common case, kept short
                if self._timer is not None:
                    self._arm()
                return
            self.head_since = self.loop.time()
            self.guard.table.place(self, "waiting")
        self._arm()

    def head_done(self) -> None:
        self.head_since = None
        self.requests += 1
        self.body_at = self.loop.time()
        self.table.place(self, "busy")

    def body_done(self) -> None:
        self.body_at = None

    def response_done(self) -> None:
        if self.requests:
            self.requests -= 1
        if not self._closed and not self.requests and self.body_at is None:
            self.table.place(self, "idle" if self.head_since is None else "waiting")
        if self._timer is not None or self.head_since is not None or self.body_at is not None:
            self._arm()

    def closed(self) -> None:
        """Closed or handed to another protocol (a WebSocket upgrade): forget it."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.guard.table.release(self)

    def evict(self, limit: int) -> None:
        """Closed by the table to make room for a new connection (it is counted out)."""
        if self._closed:
            return
        if self.head_since is not None and not self.requests:
            self._answer(503, "ServiceUnavailableException",
                         f"closed to make room for other clients at max_connections "
                         f"({limit}) before this request arrived whole; retry",
                         self.loop.time() - self.head_since)
        else:  # idle between requests: closed as a keep-alive timeout would
            self.closed()
            self.proto.transport.close()

    # -- the timer ---------------------------------------------------------------------------
    def _due_at(self) -> float | None:
        if self.head_since is not None:
            return self.head_since + self.guard.header_timeout
        if self.body_at is not None:
            return self.body_at + self.guard.body_timeout
        return None

    def _arm(self) -> None:
        """Keep one timer no later than the deadline (a later one is re-armed when it fires:
        body bytes only move the deadline, they never touch the timer)."""
        if self._closed:
            return
        due = self._due_at()
        if due is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        if self._timer is not None:
            if self._due <= due:
                return
            self._timer.cancel()
        self._due = due
        self._timer = self.loop.call_later(max(0.0, due - self.loop.time()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        due = self._due_at()
        if self._closed or due is None:
            return
        now = self.loop.time()
        if now < due:
            self._arm()
            return
        if self.head_since is not None:
            since, self.head_since = self.head_since, None
            self._count("head")
            self._answer(408, "RequestTimeoutException",
                         f"the request head did not arrive within request_header_timeout "
                         f"({self.guard.header_timeout:g} s)", now - since)
        elif self.proto.flow.read_paused or getattr(
                self.proto.cycle, "waiting_for_100_continue", False):
            # the application is not reading (yet): the client is not the one stalling
            self.body_at = now
            self._app_was_idle = True
            self._arm()
        elif self._app_was_idle:
            # the application began reading since the last expiry (it sent the 100 Continue,
            # or uvicorn resumed the socket) at a moment not known here: the client gets a
            # whole period from now, so a body sent on the cue is never cut off
            self._app_was_idle = False
            self.body_at = now
            self._arm()
        else:
            self._count("body")
            self._body_timeout()

    def _count(self, phase: str) -> None:
        self.guard.table.timeouts[self.listener, phase] += 1
        self.guard.table.timeout_notice()

    def _body_timeout(self) -> None:
        """408 unless a response has begun; the application's receive() then answers
        http.disconnect, and the access log (its middleware) writes the 408."""
        cycle = self.proto.cycle
        if cycle is not None and not cycle.response_started:
            cycle.scope[STATUS_KEY] = 408
            self._write(408, "RequestTimeoutException",
                        f"the request body stalled longer than request_body_timeout "
                        f"({self.guard.body_timeout:g} s)")
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
        self.closed()
        self.proto.transport.close()

    # -- answers written under the application -----------------------------------------------
    def _write(self, status: int, kind: str, message: str) -> None:
        body = orjson.dumps({"code": status, "type": kind, "message": message})
        head = [b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())]
        for name, value in self.proto.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        if status == 503:
            head.append(b"retry-after: 1\r\n")
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n" % len(body))
        self.proto.transport.write(b"".join(head) + body)

    def _answer(self, status: int, kind: str, message: str, elapsed: float) -> None:
        """Answer a connection that has sent no whole request, close it, and log it."""
        self._write(status, kind, message)
        self.closed()
        self.proto.transport.close()
        style = self.guard.access_style
        if style is None:
            return
        client = self.proto.client
        if style == "torchserve":
            scope = {"client": client, "method": "-", "raw_path": b"-", "http_version": "1.1"}
            access_log.info(torchserve_line(scope, status, int(elapsed * 1000)))
        else:
            access_log.info("%s", orjson.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                "request_id": None, "method": None, "path": None, "status": status,
                "latency_ms": round(elapsed * 1000, 3),
                "client": f"{client[0]}:{client[1]}" if client else None,
                "reason": kind, "listener": self.listener,
            }).decode())


class _Watched:
    """What both guarded protocols do around uvicorn's: the transport that sends a head and
    its body as one write, and the ConnectionWatch fed the connection's life."""

    guard: ClassVar[Guard]
    watch: ConnectionWatch
    transport: Any
    loop: asyncio.AbstractEventLoop

    def _watch(self, transport: Any) -> ConnectionWatch:
        """After uvicorn's connection_made: wrap its transport, watch the connection."""
        self.transport = CoalescingTransport(transport, self.loop)
        self.watch = ConnectionWatch(self, self.guard)
        return self.watch

    def connection_lost(self, exc: Exception | None) -> None:
        self.watch.closed()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self.watch.received()

    def on_response_complete(self) -> None:
        self.watch.response_done()
        super().on_response_complete()  # type: ignore[misc]

    def handle_websocket_upgrade(self, *event: Any) -> None:
        """Handed to the WebSocket protocol: no longer watched, on the socket's own transport
        (what the HTTP side held is sent first)."""
        self.watch.closed()
        if isinstance(self.transport, CoalescingTransport):
            self.transport.flush()
            self.transport = self.transport.raw
        super().handle_websocket_upgrade(*event)  # type: ignore[misc]


class GuardedHttpTools(_Watched, HttpToolsProtocol):
    """uvicorn's httptools protocol with a ConnectionWatch (``guard``: set per listener)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._watch(transport).start()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.watch.head_done()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.watch.body_done()


class GuardedH11(_Watched, H11Protocol):
    """uvicorn's h11 protocol with a ConnectionWatch: h11 has no parser callbacks, so its
    connection's ``next_event`` is observed instead (body bytes: ``received``)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        watch = self._watch(transport)
        next_event = self.conn.next_event

        def observed() -> Any:
            event = next_event()
            kind = type(event)
            if kind is h11.Request:
                watch.head_done()
            elif kind is h11.EndOfMessage:
                watch.body_done()
            return event

        self.conn.next_event = observed  # type: ignore[method-assign]
        watch.start()


PROTOCOLS: dict[str, type[asyncio.Protocol]] = {
    "httptools": GuardedHttpTools, "h11": GuardedH11}


def guarded_protocol(kind: str, guard: Guard) -> type[asyncio.Protocol]:
    """The protocol class uvicorn's ``Config(http=...)`` takes, bound to ``guard``."""
    base = PROTOCOLS[kind]
    return type(f"{base.__name__}_{guard.listener}", (base,), {"guard": guard})
