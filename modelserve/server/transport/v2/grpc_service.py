"""OIP v2 over gRPC: ``inference.GRPCInferenceService`` on its own port, served by grpcio's
asyncio server on the frontend's event loop (next to the uvicorn listeners).

Thin like the REST routes: it converts protobuf to :class:`InferRequest` and calls
:class:`V2Core`. Inputs arrive in ``raw_input_contents`` (what tritonclient sends) or in the
typed ``contents`` fields; outputs always leave in ``raw_output_contents``. Errors become gRPC
status codes with the message (400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, ...).

``ModelStreamInfer`` is Triton's bidirectional stream (tritonclient's ``start_stream`` /
``async_stream_infer``, the aio client's ``stream_infer``): the requests on a stream run
concurrently, each answered on it as Triton answers a decoupled model. A handler that streams
sends one response per chunk: one BYTES tensor of shape [1] holding the chunk (named as the
request's first requested output, else ``OUTPUT``; its ``content_type`` parameter says how
the handler's chunk was encoded), ``triton_final_response: false``, and the request's ``id``;
when the request set ``triton_enable_empty_final_response``, an empty response with
``triton_final_response: true`` ends it. A handler that does not stream answers once, as
``ModelInfer`` would (``triton_final_response: true``). Errors go in ``error_message`` (with
``infer_response`` naming the request) and the stream goes on; a client that cancels the
stream cancels its requests' outstanding work, in the workers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from modelserve.config import Settings
from modelserve.datatypes import TensorError, numpy_dtype, serialize_bytes
from modelserve.errors import ModelServeError
from modelserve.server.transport.grpc_listen import listen, new_server
from modelserve.server.transport.request_ids import RequestIds
from modelserve.server.transport.v2.core import V2Core
from modelserve.server.transport.v2.protos import grpc_service_pb2 as pb
from modelserve.server.transport.v2.protos import grpc_service_pb2_grpc as pb_grpc
from modelserve.server.transport.v2.types import InferRequest, RequestedOutput, Tensor

log = logging.getLogger("modelserve.grpc")

_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND, 409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED, 501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# datatype -> the typed contents field that may carry it
_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _param(value: Any) -> Any:
    field = value.WhichOneof("parameter_choice")
    return getattr(value, field) if field else None


def _contents_raw(tensor: Any) -> bytes:
    import numpy as np  # typed contents only: raw_input_contents needs no numpy

    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        raise TensorError(f"input '{tensor.name}': {tensor.datatype} data must be sent in "
                          "raw_input_contents")
    values = getattr(tensor.contents, field)
    if tensor.datatype == "BYTES":
        return serialize_bytes(np.array(list(values), dtype=object))
    try:
        return np.asarray(values, dtype=numpy_dtype(tensor.datatype)).tobytes()
    except OverflowError as exc:
        raise TensorError(f"input '{tensor.name}': {exc}") from None


def parse_request(request: Any) -> InferRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise TensorError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    if not request.inputs:
        raise TensorError("the request has no inputs")
    inputs = []
    for i, t in enumerate(request.inputs):
        data = raw[i] if raw else _contents_raw(t)
        params = {k: _param(v) for k, v in t.parameters.items()}
        inputs.append(Tensor(t.name, t.datatype, list(t.shape), data, params))
    outputs = [RequestedOutput(o.name) for o in request.outputs] or None
    params = {k: _param(v) for k, v in request.parameters.items()}
    return InferRequest(inputs, outputs, request.id or None, params)


STREAM_OUTPUT = "OUTPUT"  # a streamed chunk's tensor, unless the request names its output
FINAL = "triton_final_response"
EMPTY_FINAL = "triton_enable_empty_final_response"


def _bytes_element(chunk: bytes) -> bytes:
    """One BYTES element in raw form: its 4-byte little-endian length, then the bytes."""
    return len(chunk).to_bytes(4, "little") + chunk


def _headers(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def _stream_response(name: str, version: str, rid: str, final: bool,
                     tensors: Sequence[list[Any]] = (), error: str = "") -> Any:
    """A ModelStreamInferResponse; ``tensors``: ``[name, datatype, shape, raw, params?]``."""
    out = pb.ModelInferResponse.InferOutputTensor
    outputs = [out(name=t[0], datatype=t[1], shape=t[2], parameters={
        k: pb.InferParameter(string_param=v) for k, v in (t[4] if len(t) > 4 else {}).items()})
        for t in tensors]
    return pb.ModelStreamInferResponse(error_message=error, infer_response=pb.ModelInferResponse(
        model_name=name, model_version=version, id=rid, outputs=outputs,
        raw_output_contents=[t[3] for t in tensors],
        parameters={FINAL: pb.InferParameter(bool_param=final)}))


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _errors(fn: Handler) -> Handler:
    async def method(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except ModelServeError as exc:
            await context.abort(_STATUS.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        except TensorError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            log.exception("gRPC %s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    method.__name__ = fn.__name__
    return method


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: V2Core) -> None:
        self.core = core
        self._ids = RequestIds("grpc-")
        for name in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                     "ModelMetadata", "ModelInfer", "ModelConfig", "ModelStatistics",
                     "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"):
            setattr(self, name, _errors(getattr(self, f"_{name}")))

    async def _ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def _ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.core.server_ready())

    async def _ModelReady(self, request: Any, context: Any) -> Any:
        self.core.model(request.name, request.version)  # NOT_FOUND for an unknown model
        return pb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

    async def _ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.core.server_metadata())

    async def _ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = self.core.model_metadata(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]])

    async def _ModelInfer(self, request: Any, context: Any) -> Any:
        req = parse_request(request)
        headers = _headers(context)
        request_id = self._ids.new(headers.get("x-request-id"))
        mv, outputs = await self.core.infer(request.model_name, request.model_version, req,
                                            headers, request_id)
        out_tensor = pb.ModelInferResponse.InferOutputTensor
        return pb.ModelInferResponse(
            model_name=mv.name, model_version=mv.version, id=request.id,
            outputs=[out_tensor(name=n, datatype=dt, shape=shape) for n, dt, shape, _ in outputs],
            raw_output_contents=[raw for *_, raw in outputs])

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Each request on the stream runs in its own task, which queues its responses; this
        generator sends them. It ends when the client has closed its side and every request
        is answered; if the client cancels (or the server stops) it, the tasks are cancelled,
        which closes their streams and so cancels the work in the workers."""
        headers = _headers(context)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            queue.put_nowait(None)  # wakes the sender to check whether all is answered

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(self._stream_one(request, headers,
                                                            queue.put_nowait))
                tasks.add(task)
                task.add_done_callback(done)

        reader = asyncio.create_task(read())
        reader.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while True:
                response = await queue.get()
                if response is not None:
                    yield response
                elif reader.done() and not tasks:
                    break
            if not reader.cancelled() and reader.exception() is not None:
                log.warning("ModelStreamInfer: reading requests failed: %s",
                            reader.exception())
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_one(self, request: Any, headers: dict[str, str],
                          send: Callable[[Any], None]) -> None:
        """One request of a ModelStreamInfer stream: its responses, through ``send``."""
        name, version, rid = request.model_name, request.model_version, request.id
        try:
            req = parse_request(request)
            empty_final = bool(req.parameters.pop(EMPTY_FINAL, False))
            output = request.outputs[0].name if request.outputs else STREAM_OUTPUT
            request_id = self._ids.numbered(headers.get("x-request-id"))
            mv, answer = await self.core.infer_stream(name, version, req, headers, request_id)
            name, version = mv.name, mv.version
            streamed = False
            async with contextlib.aclosing(answer):
                async for result in answer:
                    if result.tensors is not None:  # answered whole, as ModelInfer answers
                        send(_stream_response(name, version, rid, True, result.tensors))
                        continue
                    streamed = True
                    send(_stream_response(name, version, rid, False, [[
                        output, "BYTES", [1], _bytes_element(result.body),
                        {"content_type": result.content_type}]]))
            if streamed and empty_final:
                send(_stream_response(name, version, rid, True))
        except ModelServeError as exc:
            send(_stream_response(name, version, rid, True, error=exc.message))
        except TensorError as exc:
            send(_stream_response(name, version, rid, True, error=str(exc)))
        except Exception as exc:
            log.exception("ModelStreamInfer request %r failed", rid)
            send(_stream_response(name, version, rid, True,
                                  error=f"{type(exc).__name__}: {exc}"))

    async def _ModelConfig(self, request: Any, context: Any) -> Any:
        cfg = self.core.model_config(request.name, request.version)
        return pb.ModelConfigResponse(config=pb.ModelConfig(
            name=cfg["name"], platform=cfg["platform"], backend=cfg["backend"],
            max_batch_size=cfg["max_batch_size"],
            input=[pb.ModelInput(**t) for t in cfg["input"]],
            output=[pb.ModelOutput(**t) for t in cfg["output"]],
            instance_group=[pb.ModelInstanceGroup(**g) for g in cfg["instance_group"]],
            dynamic_batching=pb.ModelDynamicBatching(**cfg["dynamic_batching"])))

    async def _ModelStatistics(self, request: Any, context: Any) -> Any:
        stats = self.core.model_stats(request.name or None, request.version or None)
        out = []
        for st in stats:
            infer = {k: pb.StatisticDuration(**v) for k, v in st["inference_stats"].items()}
            out.append(pb.ModelStatistics(
                name=st["name"], version=st["version"], last_inference=st["last_inference"],
                inference_count=st["inference_count"], execution_count=st["execution_count"],
                inference_stats=pb.InferStatistics(**infer)))
        return pb.ModelStatisticsResponse(model_stats=out)

    async def _RepositoryIndex(self, request: Any, context: Any) -> Any:
        index = pb.RepositoryIndexResponse.ModelIndex
        models = [m for m in self.core.repository_index()
                  if not request.ready or m["state"] == "READY"]
        return pb.RepositoryIndexResponse(models=[index(**m) for m in models])

    async def _RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self.core.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def _RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self.core.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


async def start_grpc_server(core: V2Core, settings: Settings,
                            interceptors: list[grpc.aio.ServerInterceptor] | None = None,
                            credentials: grpc.ServerCredentials | None = None,
                            ) -> grpc.aio.Server:
    """Bind ``host:grpc_inference_port`` and start (TLS with ``credentials``); raises
    OSError when the port cannot be bound."""
    server = new_server(settings, interceptors)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    await listen(server, settings.host, settings.grpc_inference_port, "gRPC", credentials)
    return server
