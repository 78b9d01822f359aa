"""The request deadlines and the connection cap at the protocol layer, against both of
uvicorn's HTTP protocols (httptools, h11): a real uvicorn server on uvloop in a thread, raw
sockets as the slow, idle and busy clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
import uvloop

from modelserve.server.transport.http.access_log import AccessLog
from modelserve.server.transport.http.connections import ConnectionTable
from modelserve.server.transport.http.deadlines import Guard, guarded_protocol
from tests.conftest import free_port, wait_for


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/fast, /slow?s (sleeps, then answers), /stream (4 chunks 0.5 s apart), POST /echo
    (reads the whole body, answers its length), POST /late (/echo, reading after 2 s)."""
    path, query = scope["path"], scope["query_string"].decode()
    if path == "/late":  # reads its body only after 2 s
        await asyncio.sleep(2)
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if path == "/slow":
        await asyncio.sleep(float(query.split("=")[1]))
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(4):
            await asyncio.sleep(0.5)
            await send({"type": "http.response.body", "body": b"chunk%d;" % i,
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    out = str(len(body)).encode() if path in ("/echo", "/late") else b"ok"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


class _Listener(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ThreadServer:
    """A guarded uvicorn listener on its own uvloop thread."""

    def __init__(self, kind: str, limit: int, header: float, body: float) -> None:
        self.table = ConnectionTable(limit)
        self.port = free_port()
        guard = Guard("inference", self.table, header, body, "json")
        config = uvicorn.Config(AccessLog(app, "json"), host="127.0.0.1", port=self.port,
                                http=guarded_protocol(kind, guard), loop="none",
                                lifespan="off", timeout_keep_alive=60, log_level="warning")
        self.server = _Listener(config)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=10)

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self.server.serve())

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def open_count(self) -> int:
        return sum(self.table.open.values())

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=15)
        return sock


@pytest.fixture(params=["httptools", "h11"])
def make(request: pytest.FixtureRequest) -> Iterator[Any]:
    made: list[ThreadServer] = []

    def start(limit: int = 64, header: float = 30.0, body: float = 30.0) -> ThreadServer:
        made.append(ThreadServer(request.param, limit, header, body))
        return made[-1]

    yield start
    for srv in made:
        srv.stop()


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One response with a Content-Length or chunked body: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lower = head.lower()
    if b"content-length:" in lower:
        size = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < size:
            rest += sock.recv(65536)
        return int(head[9:12]), rest[:size]
    while not rest.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(head[9:12]), rest


def get(srv: ThreadServer, path: str = "/fast") -> tuple[int, bytes]:
    with srv.connect() as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        return read_response(sock)


def test_a_head_that_does_not_arrive_in_time_is_408_and_closed(make, caplog):
    srv = make(header=1.0)
    caplog.set_level(logging.INFO, logger="modelserve.access")
    with srv.connect() as partial, srv.connect() as silent:
        started = time.monotonic()
        partial.sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n")
        answer = read_all(partial)
        assert time.monotonic() - started >= 0.9
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
        assert b"connection: close" in answer
        body = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert body["code"] == 408 and body["type"] == "RequestTimeoutException"
        assert "request_header_timeout" in body["message"]
        assert read_all(silent).startswith(b"HTTP/1.1 408")  # sent nothing at all
    assert srv.table.timeouts["inference", "head"] == 2
    wait_for(lambda: srv.open_count() == 0)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "modelserve.access"]
    assert [(e["status"], e["reason"]) for e in lines] == [(408, "RequestTimeoutException")] * 2
    assert get(srv) == (200, b"ok")  # the server goes on serving


def test_a_stalled_body_is_408_and_a_slow_steady_one_is_not(make, caplog):
    srv = make(header=30.0, body=1.0)
    caplog.set_level(logging.INFO, logger="modelserve.access")
    with srv.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"request_body_timeout" in answer
    assert srv.table.timeouts["inference", "body"] == 1
    wait_for(lambda: any(r.name == "modelserve.access" and '"status":408' in r.getMessage()
                         and '"path":"/echo"' in r.getMessage() for r in caplog.records))
    with srv.connect() as sock:  # one byte every 0.4 s for 4 s: never a 1 s pause
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):
            time.sleep(0.4)
            sock.sendall(b"x")
        assert read_response(sock) == (200, b"10")


def test_a_body_the_application_has_not_asked_for_yet_is_not_timed(make):
    srv = make(body=1.0)
    with srv.connect() as sock:  # the client waits for its 100 Continue, sent at receive()
        sock.sendall(b"POST /late HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 3\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"abc")
        assert read_response(sock) == (200, b"3")
    with srv.connect() as sock:  # a body larger than uvicorn buffers, read after 2 s
        sock.sendall(b"POST /late HTTP/1.1\r\nHost: t\r\nContent-Length: 4000000\r\n\r\n")
        sock.sendall(b"x" * 4_000_000)
        assert read_response(sock) == (200, b"4000000")
    assert sum(srv.table.timeouts.values()) == 0


def test_a_client_answering_its_100_continue_gets_a_whole_period(make):
    # the deadline expires at 1.2 s with /late not reading (re-armed to 2.4 s); /late asks
    # for the body at 2 s; the client sends it 0.6 s after its cue, within the 1.2 s allowed
    srv = make(body=1.2)
    with srv.connect() as sock:
        sock.sendall(b"POST /late HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 3\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        time.sleep(0.6)
        sock.sendall(b"abc")
        assert read_response(sock) == (200, b"3")
    assert sum(srv.table.timeouts.values()) == 0


def test_long_answers_and_streams_are_not_timed(make):
    srv = make(header=0.5, body=0.5)
    with srv.connect() as sock:
        sock.sendall(b"GET /slow?s=2 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock) == (200, b"ok")
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        status, body = read_response(sock)
        assert status == 200 and all(b"chunk%d;" % i in body for i in range(4))
        time.sleep(0.3)  # kept alive, idle: the next request gets a fresh deadline
        sock.sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock) == (200, b"ok")
    assert sum(srv.table.timeouts.values()) == 0


def test_a_kept_alive_connection_times_its_next_head_from_its_first_byte(make):
    srv = make(header=1.0)
    with srv.connect() as sock:
        sock.sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock) == (200, b"ok")
        time.sleep(1.5)  # idle longer than the head deadline: idle is not a late head
        started = time.monotonic()
        sock.sendall(b"GET /fa")
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started >= 0.9


def test_pipelined_requests_are_both_answered(make):
    srv = make(header=1.0)
    with srv.connect() as sock:
        sock.sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\nGET /slow?s=0.1 HTTP/1.1\r\n"
                     b"Host: t\r\n\r\n")
        assert read_response(sock) == (200, b"ok")
        assert read_response(sock) == (200, b"ok")


def test_at_the_cap_slow_then_idle_connections_make_room(make):
    srv = make(limit=4)
    slow = []
    for n in range(1, 5):  # one by one: the first is the oldest
        slow.append(srv.connect())
        slow[-1].sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n")
        wait_for(lambda n=n: len(srv.table.waiting) == n)
    assert get(srv) == (200, b"ok")  # a whole request is served: the oldest slow one went
    evicted = read_all(slow[0])
    assert evicted.startswith(b"HTTP/1.1 503") and b"max_connections (4)" in evicted
    assert srv.table.evicted["inference", "waiting"] == 1
    for sock in slow:
        sock.close()
    wait_for(lambda: srv.open_count() == 0)

    idle = []
    for n in range(1, 5):
        idle.append(srv.connect())
        idle[-1].sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(idle[-1]) == (200, b"ok")
        wait_for(lambda n=n: len(srv.table.idle) == n)
    assert get(srv) == (200, b"ok")
    assert read_all(idle[0]) == b""  # closed as a keep-alive timeout closes it
    assert srv.table.evicted["inference", "idle"] == 1
    idle[1].sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")  # the others still serve
    assert read_response(idle[1]) == (200, b"ok")
    for sock in idle:
        sock.close()


def test_at_the_cap_with_every_connection_busy_a_new_one_is_refused_fast(make):
    srv = make(limit=3)
    busy = [srv.connect() for _ in range(3)]
    for sock in busy:
        sock.sendall(b"GET /slow?s=6 HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_for(lambda: srv.open_count() == 3 and not srv.table.waiting)
    started = time.monotonic()
    with srv.connect() as late:
        answer = read_all(late)
    assert time.monotonic() - started < 5  # well before any busy request ends
    assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer
    assert srv.table.refused["inference"] == 1
    for sock in busy:
        assert read_response(sock) == (200, b"ok")
        sock.close()
