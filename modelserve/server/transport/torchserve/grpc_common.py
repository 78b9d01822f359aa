"""What TorchServe's two gRPC services share: status codes, error details, JSON, token auth,
and the reading of their messages' fields (none of it imports the generated modules).

Errors answer as TorchServe's ``GRPCUtils.getGRPCStatusCode`` maps an HTTP status to a gRPC
code, and their details are grpc-java's ``withDescription(message).augmentDescription(cls)``:
the message, a line break, and the Java exception class TorchServe names (its clients print
or match that text). Token authorization is TorchServe's ``GRPCInterceptor``: every method of
the service, Ping included, needs ``authorization: Bearer KEY`` in the call's metadata (the
inference key on the inference service, the management key on the management one), else
PERMISSION_DENIED.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2
from pydantic import ValidationError

from modelserve.errors import BadRequestError, ModelServeError
from modelserve.server.engine.registration import RegisterRequest
from modelserve.server.transport.auth import INVALID_MESSAGE, KeyStore

# GRPCUtils.getGRPCStatusCode
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 416: grpc.StatusCode.OUT_OF_RANGE,
    499: grpc.StatusCode.CANCELLED, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
    501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE,
}
# the error body's type -> the class TorchServe's details name (getCanonicalName)
_ARCHIVE, _HTTP = "org.pytorch.serve.archive", "org.pytorch.serve.http"
JAVA_CLASSES = {
    "ModelNotFoundException": f"{_ARCHIVE}.model.ModelNotFoundException",
    "ModelVersionNotFoundException": f"{_ARCHIVE}.model.ModelVersionNotFoundException",
    "ModelException": f"{_ARCHIVE}.model.ModelException",
    "DownloadArchiveException": f"{_ARCHIVE}.DownloadArchiveException",
    "WorkerInitializationException": "org.pytorch.serve.wlm.WorkerInitializationException",
    **{name: f"{_HTTP}.{name}" for name in (
        "BadRequestException", "InternalServerException", "ConflictStatusException",
        "ServiceUnavailableException", "RequestTimeoutException", "MethodNotAllowedException",
        "InvalidModelVersionException", "ResourceNotFoundException")},
}
INTERNAL_SERVER = JAVA_CLASSES["InternalServerException"]
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
MODEL_EXCEPTION = JAVA_CLASSES["ModelException"]


def grpc_code(status: int) -> grpc.StatusCode:
    """GRPCUtils.getGRPCStatusCode: an HTTP status as a gRPC code."""
    if status in _CODES:
        return _CODES[status]
    if 200 <= status < 300:
        return grpc.StatusCode.OK
    if 400 <= status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    if 500 <= status < 600:
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.UNKNOWN


def java_class(exc: ModelServeError) -> str:
    return JAVA_CLASSES.get(exc.type, exc.type)


def details(message: str, cls: str) -> str:
    """grpc-java's ``withDescription(message).augmentDescription(cls)``."""
    return f"{message}\n{cls}"


def gson_pretty(value: Any) -> str:
    """TorchServe's ``JsonUtils.GSON_PRETTY``: two-space indent, no HTML or ASCII escaping."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def metadata_headers(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's text metadata, as the request headers a handler can read (the key stays
    out of them)."""
    return {k: v for k, v in (context.invocation_metadata() or ())
            if isinstance(v, str) and k != "authorization"}


_BEARER = re.compile(rb"Bearer\s+(\S+)")  # TokenAuthorization.bearerTokenHeaderPattern


async def _deny(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, INVALID_MESSAGE)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """TorchServe's GRPCInterceptor: a call without the ``key_type`` key is closed with
    PERMISSION_DENIED before its servicer runs."""

    def __init__(self, keys: KeyStore, key_type: str) -> None:
        self.keys = keys
        self.key_type = key_type

    def _authorized(self, metadata: Any) -> bool:
        header = next((value for key, value in metadata or () if key == "authorization"), None)
        if isinstance(header, str):
            header = header.encode()
        match = _BEARER.fullmatch(header) if isinstance(header, bytes) else None
        return match is not None and self.keys.check(self.key_type, b"Bearer " + match[1])

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None or self._authorized(details.invocation_metadata):
            return handler
        # a refusal of the method's own shape, so that the client reads the status at once
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(_deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_deny)
        return grpc.unary_unary_rpc_method_handler(_deny)


# -- the messages' fields ---------------------------------------------------------------


def error_info(reason: str) -> any_pb2.Any:
    """``Any.pack(ErrorInfo{reason})``: ErrorInfo's field 1 (reason), encoded by hand so that
    no googleapis package is needed for this one field."""
    raw = reason.encode()
    size, length = len(raw), bytearray()
    while True:
        length.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            break
    return any_pb2.Any(type_url=ERROR_INFO, value=b"\x0a" + bytes(length) + raw)


def form_body(inputs: Mapping[str, bytes]) -> tuple[bytes, str]:
    """The input map as one multipart/form-data body, every part raw bytes
    (application/octet-stream): the worker decodes it into ``{name: bytes, ...}``."""
    boundary = secrets.token_hex(16)
    parts = []
    for name, value in inputs.items():
        if "\r" in name or "\n" in name:
            raise BadRequestError(f"input name {name!r} has a line break")
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{quoted}\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + value + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def given(value: int) -> int | None:
    """GRPCUtils.getRegisterParam: a number <= 0 is the default."""
    return value if value > 0 else None


def register_request(request: Any) -> RegisterRequest:
    """``RegisterModelRequest(grpc request)``'s reading of the fields."""
    if not request.url:
        raise BadRequestError("Parameter url is required.")
    values = {
        "url": request.url,
        "model_name": request.model_name or None,
        "handler": request.handler or None,
        "runtime": request.runtime or None,
        "batch_size": given(request.batch_size),
        "max_batch_delay": given(request.max_batch_delay),
        "initial_workers": given(request.initial_workers),
        "response_timeout": given(request.response_timeout),
        "startup_timeout": given(request.startup_timeout),
        "synchronous": request.synchronous,
    }
    try:
        return RegisterRequest.model_validate(values)
    except ValidationError as exc:  # e.g. a model name that could never be served
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BadRequestError(f"invalid registration: {problems}") from None
