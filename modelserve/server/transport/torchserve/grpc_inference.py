"""TorchServe's gRPC inference API: ``org.pytorch.serve.grpc.inference.InferenceAPIsService``
(its ``inference.proto``), port 7070 under the TorchServe personality.

Thin like the REST routes: each call goes to ``DataPlane.infer`` / ``infer_stream``, and the
answers follow TorchServe 0.12's ``InferenceImpl`` and ``GRPCJob``:

- ``Ping``: ``health`` is the JSON ``/ping`` answers, pretty-printed as Gson does.
- ``Predictions``: the request's ``input`` map reaches the handler as one request whose keys
  are the map's (``data[0]["data"]`` for ``input={"data": ...}``), each value the raw bytes,
  as TorchServe hands them over. The answer is the worker's body in ``prediction``. A handler
  that streams answers with its first chunk only (TorchServe completes the call on it).
- ``StreamPredictions``: one ``PredictionResponse`` per chunk a streaming handler sends
  (``send_intermediate_predict_response``, or a generator); a handler that does not stream
  answers with one.
- ``StreamPredictions2``: a bidirectional stream of requests that each need a
  ``sequence_id``. Each request goes to the model as it arrives (as TorchServe's ``onNext``
  adds its job at once; at most STREAM2_AHEAD of a call at a time), so a stateful model's
  sequence (engine/sequences.py) has the next one queued and runs them in order; the answers
  go back in the order the requests came, every chunk a response carrying its request's
  ``sequence_id``. An error is a response whose ``status`` (google.rpc.Status: code,
  message, and an ErrorInfo detail naming TorchServe's exception) replaces the prediction,
  and the stream goes on. The handler reads the sequence id as the ``ts_request_sequence_id``
  header (``context.get_sequence_id``).

Errors end the call with TorchServe's status and details: a missing model_name or an unknown
model or version is INTERNAL (as InferenceImpl answers), a worker's error its HTTP status
mapped by GRPCUtils, with ``org.pytorch.serve.http.InternalServerException`` after the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from modelserve.errors import BadRequestError, ModelNotFoundError, ModelServeError
from modelserve.server.engine.dataplane import DataPlane
from modelserve.server.engine.jobs import Result
from modelserve.server.engine.streams import Stream
from modelserve.server.transport.request_ids import RequestIds
from modelserve.server.transport.torchserve.grpc_common import (
    INTERNAL_SERVER,
    details,
    error_info,
    form_body,
    grpc_code,
    gson_pretty,
    java_class,
    metadata_headers,
)
from modelserve.server.transport.torchserve.protos import inference_pb2 as pb
from modelserve.server.transport.torchserve.protos import inference_pb2_grpc as pb_grpc
from modelserve.server.transport.torchserve.protos.google_rpc import status_pb2

_REQUEST_ERROR = "BadRequestException.()"  # the reason InferenceImpl gives its own checks
log = logging.getLogger("modelserve.grpc")
STREAM2_AHEAD = 32  # requests of one StreamPredictions2 call at the model at once
_DONE = object()  # the end of one request's chunks


class CallError(Exception):
    """An error as TorchServe's gRPC inference answers it: code, message, and the class name
    it adds (the details' second line; the ErrorInfo reason on StreamPredictions2)."""

    def __init__(self, code: grpc.StatusCode, message: str, cls: str) -> None:
        super().__init__(message)
        self.code, self.message, self.cls = code, message, cls

    @classmethod
    def of(cls, exc: ModelServeError) -> CallError:
        """An unknown model or version is INTERNAL (InferenceImpl.prediction); a request the
        frontend refuses gets GRPCUtils' code for its status; what the worker answered
        (GRPCJob.sendError) also names InternalServerException."""
        if isinstance(exc, ModelNotFoundError):
            return cls(grpc.StatusCode.INTERNAL, exc.message, java_class(exc))
        if isinstance(exc, BadRequestError):
            return cls(grpc_code(exc.status), exc.message, java_class(exc))
        return cls(grpc_code(exc.status), exc.message, INTERNAL_SERVER)


class InferenceServicer(pb_grpc.InferenceAPIsServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.max_response = dataplane.settings.max_response_size
        self._ids = RequestIds("tsgrpc-")

    async def Ping(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.dataplane.draining:
            status = "Draining"
        else:
            status = "Healthy" if self.dataplane.is_healthy() else "Unhealthy"
        return pb.TorchServeHealthResponse(health=gson_pretty({"status": status}))

    def _body(self, result: Result) -> bytes:
        if result.status >= 400:
            raise CallError.of(ModelServeError.from_body(result.status, result.body))
        if len(result.body) > self.max_response:
            raise CallError(grpc.StatusCode.INTERNAL,
                            f"response of {len(result.body)} bytes exceeds max_response_size "
                            f"({self.max_response} bytes)", INTERNAL_SERVER)
        return result.body

    def _job(self, request: Any, headers: dict[str, str]) -> tuple[str, str | None, bytes, str,
                                                                   str]:
        if not request.model_name:
            raise CallError(grpc.StatusCode.INTERNAL, "Parameter model_name is required.",
                            _REQUEST_ERROR)
        body, content_type = form_body(request.input)
        return (request.model_name, request.model_version or None, body, content_type,
                self._ids.new(headers.get("x-request-id")))

    async def _predict(self, request: Any, headers: dict[str, str]) -> bytes:
        """The worker's answer; of a handler that streams, the first chunk (the rest of the
        work is cancelled)."""
        try:
            name, version, body, content_type, request_id = self._job(request, headers)
            result = await self.dataplane.infer(name, version, body, content_type, headers,
                                                request_id)
            if result.__class__ is Stream:
                stream: Stream = result  # type: ignore[assignment]
                first = b""
                try:
                    async for chunk in stream:
                        first = chunk
                        break
                finally:
                    stream.close()
                result = Result(stream.status, stream.content_type, first, {})
            return self._body(result)  # type: ignore[arg-type]
        except ModelServeError as exc:
            raise CallError.of(exc) from None

    async def _chunks(self, request: Any, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """Each chunk of the worker's answer (one for a handler that does not stream)."""
        try:
            name, version, body, content_type, request_id = self._job(request, headers)
            answer = self.dataplane.infer_stream(name, version, body, content_type, headers,
                                                 request_id)
            async with contextlib.aclosing(answer):
                async for result in answer:
                    yield self._body(result)
        except ModelServeError as exc:
            raise CallError.of(exc) from None

    async def Predictions(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return pb.PredictionResponse(
                prediction=await self._predict(request, metadata_headers(context)))
        except CallError as exc:
            await context.abort(exc.code, details(exc.message, exc.cls))

    async def StreamPredictions(self, request: Any,
                                context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:  # closed at once when the call ends early: that cancels the worker's work
            async with contextlib.aclosing(self._chunks(request, metadata_headers(context))) \
                    as chunks:
                async for body in chunks:
                    yield pb.PredictionResponse(prediction=body)
        except CallError as exc:
            await context.abort(exc.code, details(exc.message, exc.cls))

    async def StreamPredictions2(self, request_iterator: AsyncIterator[Any],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """Every request sent on as it comes, the answers in the order of the requests; ends
        when the client has closed its side and the last request is answered."""
        headers = metadata_headers(context)
        answers: asyncio.Queue[_Answer | None] = asyncio.Queue()
        ahead = asyncio.Semaphore(STREAM2_AHEAD)
        started: list[_Answer] = []
        reader = asyncio.create_task(
            self._read_requests(request_iterator, headers, answers, ahead, started))
        try:
            while (answer := await answers.get()) is not None:
                while (item := await answer.items.get()) is not _DONE:
                    if isinstance(item, CallError):
                        status = status_pb2.Status(code=item.code.value[0], message=item.message,
                                                   details=[error_info(item.cls)])
                        yield pb.PredictionResponse(sequence_id=answer.sequence or None,
                                                    status=status)
                        break
                    yield pb.PredictionResponse(prediction=item, sequence_id=answer.sequence)
                ahead.release()
        finally:  # the call ended early: its requests' work stops
            reader.cancel()
            for answer in started:
                if answer.task is not None:
                    answer.task.cancel()

    async def _read_requests(self, request_iterator: AsyncIterator[Any],
                             headers: dict[str, str], answers: asyncio.Queue[_Answer | None],
                             ahead: asyncio.Semaphore, started: list[_Answer]) -> None:
        """StreamPredictions2's requests, each started as it is read (tasks start in the
        order made, so the requests reach the batcher in the order sent)."""
        try:
            async for request in request_iterator:
                await ahead.acquire()
                sequence = request.sequence_id
                if sequence:
                    answer = _Answer(sequence, self._chunks(
                        request, {**headers, self.dataplane.sequence_id: sequence}))
                else:
                    answer = _Answer(sequence, None, CallError(
                        grpc.StatusCode.INTERNAL, "Parameter sequenceId is required.",
                        _REQUEST_ERROR))
                started[:] = [a for a in started if a.task is not None and not a.task.done()]
                started.append(answer)
                answers.put_nowait(answer)
        finally:
            answers.put_nowait(None)


class _Answer:
    """One StreamPredictions2 request at work: its chunks (or error) as they come."""

    def __init__(self, sequence: str, chunks: AsyncIterator[bytes] | None,
                 error: CallError | None = None) -> None:
        self.sequence = sequence
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(chunks)) if chunks is not None else None
        if error is not None:
            self.items.put_nowait(error)

    async def _run(self, chunks: AsyncIterator[bytes]) -> None:
        try:
            async with contextlib.aclosing(chunks):  # type: ignore[type-var]
                async for body in chunks:
                    self.items.put_nowait(body)
            self.items.put_nowait(_DONE)
        except CallError as exc:
            self.items.put_nowait(exc)
        except Exception as exc:  # a bug: answered as one, never left waiting
            log.exception("StreamPredictions2 request failed")
            self.items.put_nowait(CallError(grpc.StatusCode.INTERNAL,
                                            f"{type(exc).__name__}: {exc}", INTERNAL_SERVER))


def add_to(server: grpc.aio.Server, dataplane: DataPlane) -> None:
    pb_grpc.add_InferenceAPIsServiceServicer_to_server(InferenceServicer(dataplane), server)
