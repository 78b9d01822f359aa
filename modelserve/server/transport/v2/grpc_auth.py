"""Token authorization for the OIP v2 gRPC service: the inference key, as on the REST port.

Clients send it as the ``authorization`` metadata (``Bearer KEY``), which is what
tritonclient's ``headers=`` argument sets. ServerLive and ServerReady stay open, like
``/ping``, so that probes need no key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from modelserve.server.transport.auth import KeyStore

OPEN_METHODS = frozenset({
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
})
STREAMING_METHODS = frozenset({"/inference.GRPCInferenceService/ModelStreamInfer"})
DENIED = "Token Authorization failed: send the inference key as 'authorization: Bearer KEY'"


async def _deny_unary(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)


async def _deny_stream(requests: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without the inference key, before the servicer sees it."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        if details.method in OPEN_METHODS:
            return await continuation(details)
        header = next((value for key, value in details.invocation_metadata or ()
                       if key == "authorization"), None)
        if isinstance(header, str):
            # as HTTP does, whitespace around the value is not part of it: perf_analyzer's
            # -H 'authorization: Bearer KEY' sends the space after the colon
            header = header.strip().encode()
        if self.keys.check("inference", header):
            return await continuation(details)
        if details.method in STREAMING_METHODS:
            return grpc.stream_stream_rpc_method_handler(_deny_stream)
        return grpc.unary_unary_rpc_method_handler(_deny_unary)
