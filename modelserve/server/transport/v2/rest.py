"""OIP v2 (KServe / Triton) REST routes on the inference port, and KServe v1 ``:predict``.

Thin: each route converts its wire format and calls :class:`V2Core`. Routes are plain
Starlette endpoints (no FastAPI dependency solving on the hot path), and every error leaves in
the protocol's own shape, ``{"error": "..."}``, with its status (400 bad input, 404 unknown
model, 503 overloaded, ...).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from modelserve import jsonc
from modelserve.datatypes import TensorError, to_numpy
from modelserve.errors import BadRequestError, ModelServeError
from modelserve.server.engine.jobs import Result
from modelserve.server.engine.registry import ModelVersion
from modelserve.server.engine.streams import Stream
from modelserve.server.transport.http.body import EXPLAIN, read_body
from modelserve.server.transport.http.responses import JSONResponse
from modelserve.server.transport.request_ids import RequestIds
from modelserve.server.transport.v2.core import V2Core
from modelserve.server.transport.v2.rest_codec import (
    HEADER_LENGTH,
    encode_response,
    parse_request,
    v1_instances,
)
from modelserve.server.transport.v2.types import InferRequest

log = logging.getLogger("modelserve.v2")
Endpoint = Callable[[Request], Awaitable[Response]]


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _v2_errors(fn: Endpoint) -> Endpoint:
    @functools.wraps(fn)
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except ModelServeError as exc:
            return error(exc.status, exc.message)
        except TensorError as exc:
            return error(400, str(exc))
        except Exception as exc:  # a bug: still the protocol's shape
            log.exception("v2 request failed")
            return error(500, f"{type(exc).__name__}: {exc}")
    return endpoint


def _model(request: Request) -> tuple[str, str | None]:
    return request.path_params["model_name"], request.path_params.get("model_version")


def add_v2_routes(app: FastAPI, core: V2Core, max_request: int, max_response: int) -> None:
    request_ids = RequestIds("v2-")

    def route(paths: list[str], methods: list[str]) -> Callable[[Endpoint], Endpoint]:
        def register(fn: Endpoint) -> Endpoint:
            wrapped = _v2_errors(fn)
            for path in paths:
                app.add_route(path, wrapped, methods=methods, include_in_schema=False)
            return wrapped
        return register

    def both(suffix: str = "") -> list[str]:
        return [f"/v2/models/{{model_name}}{suffix}",
                f"/v2/models/{{model_name}}/versions/{{model_version}}{suffix}"]

    @route(["/v2"], ["GET"])
    async def server_metadata(_: Request) -> Response:
        return JSONResponse(core.server_metadata())

    @route(["/v2/health/live"], ["GET"])
    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    @route(["/v2/health/ready"], ["GET"])
    async def ready(_: Request) -> Response:
        ok = core.server_ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 400)

    @route(["/v2/models/stats"], ["GET"])
    async def all_stats(_: Request) -> Response:
        return JSONResponse({"model_stats": core.model_stats(None, None)})

    @route(both("/ready"), ["GET"])
    async def model_ready(request: Request) -> Response:
        name, version = _model(request)
        core.model(name, version)  # 404 for an unknown model
        ok = core.model_ready(name, version)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 400)

    @route(both("/config"), ["GET"])
    async def model_config(request: Request) -> Response:
        return JSONResponse(core.model_config(*_model(request)))

    @route(both("/stats"), ["GET"])
    async def model_stats(request: Request) -> Response:
        return JSONResponse({"model_stats": core.model_stats(*_model(request))})

    @route(both(), ["GET"])
    async def model_metadata(request: Request) -> Response:
        return JSONResponse(core.model_metadata(*_model(request)))

    @route(both("/infer"), ["POST"])
    async def infer(request: Request) -> Response:
        name, version = _model(request)
        body = await read_body(request, max_request)
        req = parse_request(body, request.headers.get(HEADER_LENGTH))
        headers = dict(request.headers)
        request_id = request_ids.new(headers.get("x-request-id"))
        mv, outputs = await core.infer(name, version, req, headers, request_id)
        payload, json_size = encode_response(mv.name, mv.version, req, outputs)
        if len(payload) > max_response:
            raise ModelServeError(f"response of {len(payload)} bytes exceeds "
                                  f"max_response_size ({max_response} bytes)")
        if json_size is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(json_size)})

    @route(["/v2/repository/index"], ["POST"])
    async def repository_index(_: Request) -> Response:
        return JSONResponse(core.repository_index())

    @route(["/v2/repository/models/{model_name}/load"], ["POST"])
    async def load(request: Request) -> Response:
        await core.load(request.path_params["model_name"])
        return JSONResponse({})

    @route(["/v2/repository/models/{model_name}/unload"], ["POST"])
    async def unload(request: Request) -> Response:
        await core.unload(request.path_params["model_name"])
        return JSONResponse({})

    # -- KServe v1 -----------------------------------------------------------------------
    @route(["/v1/models/{model_name}"], ["GET"])
    async def v1_model(request: Request) -> Response:
        name = request.path_params["model_name"]
        core.model(name, None)
        return JSONResponse({"name": name, "ready": core.model_ready(name, None)})

    @route(["/v1/models/{model_name}:predict"], ["POST"])
    async def v1_predict(request: Request) -> Response:
        """``{"instances": [...]}`` -> ``{"predictions": [...]}``: through the tensor path when
        the model has one known input, else to the handler as a TorchServe JSON body."""
        name = request.path_params["model_name"]
        body = await read_body(request, max_request)
        mv = core.model(name, None)
        request_id = request_ids.new()
        if core.dp.settings.service_envelope:
            return enveloped(await handler_result(mv, body, dict(request.headers), request_id))
        sig = core.signature(mv)
        if sig.known and len(sig.inputs) == 1:
            try:
                doc = jsonc.loads(body)
            except orjson.JSONDecodeError as exc:
                raise BadRequestError(f"request body is not valid JSON: {exc}") from None
            spec = sig.inputs[0]
            req = InferRequest([v1_instances(doc, spec.datatype, spec.name)])
            _, outputs = await core.infer(name, None, req, dict(request.headers), request_id)
            _, datatype, shape, raw = outputs[0]
            return JSONResponse({"predictions": to_numpy(datatype, shape, raw).tolist()})
        value = await handler_answer(mv, body, dict(request.headers), request_id)
        return JSONResponse({"predictions": value})

    @route(["/v1/models/{model_name}:explain"], ["POST"])
    async def v1_explain(request: Request) -> Response:
        """The body to the handler's ``explain_handle`` (as ``/explanations``; 501 when it
        has none) -> ``{"explanations": [...]}``."""
        mv = core.model(request.path_params["model_name"], None)
        body = await read_body(request, max_request)
        headers = {**request.headers, **EXPLAIN}
        if core.dp.settings.service_envelope:
            return enveloped(await handler_result(mv, body, headers, request_ids.new()))
        value = await handler_answer(mv, body, headers, request_ids.new())
        return JSONResponse({"explanations": value})

    def enveloped(result: Result) -> Response:
        """TorchServe's service_envelope built the whole answer in the worker: sent as is."""
        return Response(result.body, status_code=result.status, headers=result.headers,
                        media_type=result.content_type)

    async def handler_answer(mv: ModelVersion, body: bytes, headers: dict[str, str],
                             request_id: str) -> list[Any]:
        """The handler's answer to a JSON body, as a list (KServe v1's shape)."""
        result = await handler_result(mv, body, headers, request_id)
        value: Any = result.body.decode(errors="replace")
        if result.content_type.startswith("application/json"):
            try:
                value = jsonc.loads(result.body)
            except orjson.JSONDecodeError:
                pass  # the handler said JSON and sent something else: pass it on as text
        return value if isinstance(value, list) else [value]

    async def handler_result(mv: ModelVersion, body: bytes, headers: dict[str, str],
                             request_id: str) -> Result:
        """The handler's answer to a JSON body; an error or a stream raises."""
        result = await core.dp.infer_version(mv, None, body, "application/json", headers,
                                             request_id)
        if isinstance(result, Stream):
            result.close()  # the worker stops it
            raise ModelServeError("this model streams its answers; KServe v1 does not: use "
                                  "/predictions", status=400)
        if result.status >= 400:
            raise ModelServeError.from_body(result.status, result.body)
        return result
