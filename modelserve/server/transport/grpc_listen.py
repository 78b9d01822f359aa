"""gRPC servers on the frontend's event loop: how each one is made and bound.

Every gRPC service here (OIP v2's ``GRPCInferenceService``, TorchServe's inference and
management services) is a ``grpc.aio`` server of its own on its own port, made by
:func:`new_server` and bound by :func:`listen`, so that message limits and TLS are set in one
place, with the connection cap and handshake deadline that stand for the HTTP listeners'
(``http.connections``, ``http.deadlines``): ``credentials`` (``grpc.ssl_server_credentials``)
makes the port a TLS one.
"""

from __future__ import annotations

import resource

import grpc

from modelserve.config import Settings
from modelserve.server.transport.http.connections import default_grpc_connections


def new_server(settings: Settings,
               interceptors: list[grpc.aio.ServerInterceptor] | None = None) -> grpc.aio.Server:
    """A server whose messages may be as large as the REST bodies (max_request_size,
    max_response_size), that holds at most ``grpc_max_connections`` client connections
    (grpcio refuses more) and closes one that has not finished its handshake (TLS, HTTP/2
    preface) within ``request_header_timeout``; a port in use is an error, never shared (no
    SO_REUSEPORT)."""
    return grpc.aio.server(interceptors=interceptors or None, options=[
        ("grpc.max_receive_message_length", settings.max_request_size),
        ("grpc.max_send_message_length", settings.max_response_size),
        ("grpc.max_allowed_incoming_connections", max_connections(settings)),
        ("grpc.server_handshake_timeout_ms", int(settings.request_header_timeout * 1000)),
        ("grpc.so_reuseport", 0),
    ])


def max_connections(settings: Settings) -> int:
    """``grpc_max_connections``, else a share of the descriptors the HTTP listeners leave
    (``connections.default_grpc_connections`` of the soft limit, raised at start)."""
    if settings.grpc_max_connections is not None:
        return settings.grpc_max_connections
    return default_grpc_connections(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def listen(server: grpc.aio.Server, host: str, port: int, what: str,
                 credentials: grpc.ServerCredentials | None = None) -> None:
    """Bind ``host:port`` (TLS with ``credentials``) and start; OSError, naming ``what``,
    when the port cannot be bound."""
    where = address(host, port)
    try:
        if credentials is not None:
            bound = server.add_secure_port(where, credentials)
        else:
            bound = server.add_insecure_port(where)
    except RuntimeError as exc:  # grpcio raises where older versions returned 0
        raise OSError(f"cannot bind the {what} port {where}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot bind the {what} port {where}")
    await server.start()
