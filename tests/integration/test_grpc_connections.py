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
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)
            if not data:  # the server's own bytes (settings, GOAWAY) come first
                return True
    except (TimeoutError, ConnectionResetError) as exc:
        return isinstance(exc, ConnectionResetError)


async def test_silent_connections_fill_the_cap_then_the_handshake_deadline_frees_it():
    settings = Settings(grpc_max_connections=2, request_header_timeout=1.0)
    server = new_server(settings)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),))
    port = free_port()
    await listen(server, "127.0.0.1", port, "test gRPC")
    try:
        assert await _call(port) == grpc.StatusCode.OK
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            await asyncio.sleep(0.2)  # accepted: the cap is taken
            assert await _call(port) == grpc.StatusCode.UNAVAILABLE
            # no handshake within request_header_timeout: the server closes them
            assert all([await _closed_by_peer(s, timeout=10) for s in silent])
        finally:
            for s in silent:
                s.close()
        assert await _call(port) == grpc.StatusCode.OK
    finally:
        await server.stop(None)


@pytest.mark.parametrize(("limit", "expected"), [(1024, 40), (65536, 512), (1 << 20, 512),
                                                 (256, 16)])
def test_the_default_cap_is_a_share_of_the_descriptor_reserve(limit: int, expected: int):
    assert default_grpc_connections(limit) == expected


def test_a_configured_cap_wins():
    assert max_connections(Settings(grpc_max_connections=7)) == 7
