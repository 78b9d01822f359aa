"""TorchServe's two gRPC services, each a server on its own port (TorchServe's 7070 and 7071):
``InferenceAPIsService`` (``grpc_torchserve_inference_port``) and ``ManagementAPIsService``
(``grpc_torchserve_management_port``), both on ``grpc_torchserve_host`` (else ``host``).
A port of 0 leaves its service off. With token authorization on, each service asks for its
own key (``grpc_common.TokenInterceptor``)."""

from __future__ import annotations

import grpc

from modelserve.server.engine.dataplane import DataPlane
from modelserve.server.transport.auth import KeyStore
from modelserve.server.transport.grpc_listen import listen, new_server
from modelserve.server.transport.torchserve import grpc_inference, grpc_management
from modelserve.server.transport.torchserve.grpc_common import TokenInterceptor


async def start_torchserve_grpc(dataplane: DataPlane, keys: KeyStore | None,
                                credentials: grpc.ServerCredentials | None = None,
                                ) -> list[grpc.aio.Server]:
    """Bind and start the services whose port is set (TLS with ``credentials``); OSError when
    a port cannot be bound, after stopping any already started."""
    settings = dataplane.settings
    host = settings.grpc_torchserve_host or settings.host
    services = (
        (settings.grpc_torchserve_inference_port, "inference", grpc_inference.add_to),
        (settings.grpc_torchserve_management_port, "management", grpc_management.add_to),
    )
    servers: list[grpc.aio.Server] = []
    try:
        for port, key_type, add_to in services:
            if not port:
                continue
            server = new_server(settings,
                                [TokenInterceptor(keys, key_type)] if keys else None)
            add_to(server, dataplane)
            await listen(server, host, port, f"TorchServe gRPC {key_type}", credentials)
            servers.append(server)
    except BaseException:
        for server in servers:
            await server.stop(None)
        raise
    return servers
