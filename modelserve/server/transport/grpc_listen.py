"""gRPC servers on the frontend's event loop: how each one is made and bound.

Every gRPC service here (OIP v2's ``GRPCInferenceService``, TorchServe's inference and
management services) is a ``grpc.aio`` server of its own on its own port, made by
:func:`new_server` and bound by :func:`listen`, so that message limits and TLS are set in one
place: ``credentials`` (``grpc.ssl_server_credentials``) makes the port a TLS one.
"""

from __future__ import annotations

import grpc


def new_server(max_receive: int, max_send: int,
               interceptors: list[grpc.aio.ServerInterceptor] | None = None) -> grpc.aio.Server:
    """A server whose messages may be as large as the REST bodies (max_request_size,
    max_response_size); a port in use is an error, never shared (no SO_REUSEPORT)."""
    return grpc.aio.server(interceptors=interceptors or None, options=[
        ("grpc.max_receive_message_length", max_receive),
        ("grpc.max_send_message_length", max_send),
        ("grpc.so_reuseport", 0),
    ])


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
