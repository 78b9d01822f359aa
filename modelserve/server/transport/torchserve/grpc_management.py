"""TorchServe's gRPC management API: ``org.pytorch.serve.grpc.management.ManagementAPIsService``
(its ``management.proto``), port 7071 under the TorchServe personality.

Thin like the REST routes (``management.py``): each call goes to the DataPlane, and answers as
TorchServe 0.12's ``ManagementImpl`` does. ``msg`` holds what the REST API's body says: the
status message of a register, scale, set-default or unregister, and for DescribeModel and
ListModels the JSON (pretty-printed, as TorchServe's Gson writes it).

Request fields are read as ``GRPCUtils.getRegisterParam`` reads them: an empty string or a
number <= 0 is "not given", so the default applies (ScaleWorker's min_worker 1 and max_worker
= min_worker, RegisterModel's batch size, delay, timeouts and initial workers); booleans
default to false (a registration is asynchronous unless ``synchronous`` is set). ListModels'
``limit`` 0 (not given) is 100, as the proto documents.

Errors: a status from TorchServe's table (``GRPCUtils``: 400 INVALID_ARGUMENT, 404 NOT_FOUND,
500 INTERNAL, ...) with the message and TorchServe's exception class as details. With the model
API off (``enable_model_api: false``), RegisterModel and UnregisterModel answer
PERMISSION_DENIED "Model API disabled", as TorchServe does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from modelserve.errors import BadRequestError, ModelNotFoundError, ModelServeError
from modelserve.server.engine.dataplane import DataPlane
from modelserve.server.transport.torchserve.grpc_common import (
    MODEL_EXCEPTION,
    details,
    given,
    grpc_code,
    gson_pretty,
    java_class,
    register_request,
)
from modelserve.server.transport.torchserve.protos import management_pb2 as pb
from modelserve.server.transport.torchserve.protos import management_pb2_grpc as pb_grpc

Method = Callable[[Any, grpc.aio.ServicerContext], Awaitable[str]]


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, cls: str) -> None:
        super().__init__(message)
        self.code, self.details = code, details(message, cls)


def _answer(method: Method) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """The method's ``msg`` as a ManagementResponse; its error as TorchServe's status."""
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return pb.ManagementResponse(msg=await method(request, context))
        except _Refused as exc:
            await context.abort(exc.code, exc.details)
        except ModelServeError as exc:
            await context.abort(grpc_code(exc.status), details(exc.message, java_class(exc)))
    call.__name__ = method.__name__
    return call


class ManagementServicer(pb_grpc.ManagementAPIsServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        for name in ("DescribeModel", "ListModels", "RegisterModel", "ScaleWorker",
                     "SetDefault", "UnregisterModel"):
            setattr(self, name, _answer(getattr(self, f"_{name}")))

    def _model_api(self) -> None:
        if not self.dataplane.settings.enable_model_api:
            raise _Refused(grpc.StatusCode.PERMISSION_DENIED, "Model API disabled",
                           MODEL_EXCEPTION)

    async def _DescribeModel(self, request: Any, context: Any) -> str:
        version = request.model_version or None
        customized = request.customized and version != "all"
        try:
            described = await self.dataplane.describe(request.model_name, version, customized)
        except ModelNotFoundError as exc:
            if not customized:
                raise
            # the customized description is a worker job: ManagementImpl answers INTERNAL
            raise _Refused(grpc.StatusCode.INTERNAL, exc.message, java_class(exc)) from None
        return gson_pretty(described)

    async def _ListModels(self, request: Any, context: Any) -> str:
        limit = request.limit if 0 < request.limit <= 100 else 100
        page = self.dataplane.list_models(limit, max(request.next_page_token, 0),
                                          token_at_end=True)
        # ListModelsResponse's field order: nextPageToken (when set), then models
        ordered = {"nextPageToken": page["nextPageToken"]} if "nextPageToken" in page else {}
        return gson_pretty({**ordered, "models": page["models"]})

    async def _RegisterModel(self, request: Any, context: Any) -> str:
        self._model_api()
        _, message = await self.dataplane.register(register_request(request))
        return message

    async def _ScaleWorker(self, request: Any, context: Any) -> str:
        low = given(request.min_worker) or 1
        high = given(request.max_worker) or low
        _, message = await self.dataplane.scale(request.model_name,
                                                request.model_version or None, low, high,
                                                request.synchronous)
        return message

    async def _SetDefault(self, request: Any, context: Any) -> str:
        return self.dataplane.set_default(request.model_name, request.model_version)

    async def _UnregisterModel(self, request: Any, context: Any) -> str:
        self._model_api()
        if not request.model_name:  # TorchServe's words for it
            raise BadRequestError("Parameter url is required.")
        return await self.dataplane.unregister(request.model_name,
                                               request.model_version or None)


def add_to(server: grpc.aio.Server, dataplane: DataPlane) -> None:
    pb_grpc.add_ManagementAPIsServiceServicer_to_server(ManagementServicer(dataplane), server)
