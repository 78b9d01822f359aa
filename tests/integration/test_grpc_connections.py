"""The gRPC listeners' connection cap and handshake deadline (``grpc_listen.new_server``):
a real grpc.aio server on loopback, raw sockets as the clients that connect and say nothing."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from modelserve.config import Settings
from modelserve.server.transport.grpc_listen import listen, max_connections, new_server
from modelserve.server.transport.http.connections import default_grpc_connections
from tests.conftest import free_port


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


async def _call(port: int) -> grpc.StatusCode:
    """One unary call on a new channel: OK, or the status it failed with."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await channel.unary_unary("/t.T/Echo")(b"hi", timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes the connection within ``timeout`` (a silent client)."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)
            if not data:  # the server's own bytes (GOAWAY) come first
                return True
    except (TimeoutError, ConnectionResetError) as exc:
        return isinstance(exc, ConnectionResetError)


async def _accepted(port: int, timeout: float = 20) -> socket.socket:
    """A connection the server has accepted and counted: it sends its HTTP/2 settings at
    once. One it refused (at the cap, the closing of an earlier one not yet counted) is
    closed without a byte, and is tried again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        try:
            if await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout):
                return sock
        except ConnectionResetError:
            pass
        sock.close()
        assert loop.time() < deadline, "the server accepted no connection"
        await asyncio.sleep(0.05)


async def _until_ok(port: int, timeout: float) -> bool:
    """Whether a call succeeds within ``timeout`` (the server counts a closed connection
    out in its own time)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await _call(port) != grpc.StatusCode.OK:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_silent_connections_fill_the_cap_then_the_handshake_deadline_frees_it():
    settings = Settings(grpc_max_connections=2, request_header_timeout=5.0)
    server = new_server(settings)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),))
    port = free_port()
    await listen(server, "127.0.0.1", port, "test gRPC")
    try:
        assert await _call(port) == grpc.StatusCode.OK
        silent = [await _accepted(port), await _accepted(port)]
        try:
            assert await _call(port) == grpc.StatusCode.UNAVAILABLE  # the cap: refused
            # no handshake within request_header_timeout: the server closes them
            assert all([await _closed_by_peer(s, timeout=20) for s in silent])
        finally:
            for s in silent:
                s.close()
        assert await _until_ok(port, timeout=10)
    finally:
        await server.stop(None)


@pytest.mark.parametrize(("limit", "expected"), [(1024, 40), (65536, 512), (1 << 20, 512),
                                                 (256, 16)])
def test_the_default_cap_is_a_share_of_the_descriptor_reserve(limit: int, expected: int):
    assert default_grpc_connections(limit) == expected


def test_a_configured_cap_wins():
    assert max_connections(Settings(grpc_max_connections=7)) == 7
