"""Inference API (TorchServe's, port 8080): /ping and /predictions/{model}[/{version}].

This is the hot path: the body is read once and handed to the worker as bytes, unparsed.
"""

from __future__ import annotations

import itertools
import os

from fastapi import FastAPI, Request, Response

from modelserve import __version__
from modelserve.config import Settings
from modelserve.errors import BadRequestError, RequestTooLargeError
from modelserve.server.dataplane import DataPlane
from modelserve.server.errors import install_error_handlers
from modelserve.server.responses import JSONResponse


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequestError(f"invalid Content-Length header: {declared!r}") from None
        if size > limit:
            raise RequestTooLargeError(
                f"request body of {size} bytes exceeds max_request_size ({limit} bytes)"
            )
        return await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(f"request body exceeds max_request_size ({limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def create_inference_app(dataplane: DataPlane, settings: Settings) -> FastAPI:
    app = FastAPI(title="modelserve inference API", version=__version__,
                  docs_url=None, redoc_url=None)
    install_error_handlers(app)
    limit = settings.max_request_size
    # Request ids: unique per process start, and far cheaper than uuid4 on the hot path.
    id_prefix = f"{os.getpid():x}-{int.from_bytes(os.urandom(4), 'big'):08x}-"
    id_counter = itertools.count()

    @app.get("/ping")
    async def ping() -> JSONResponse:
        """Healthy when every model has its minimum of ready workers (TorchServe's rule)."""
        if dataplane.is_healthy():
            return JSONResponse({"status": "Healthy"})
        return JSONResponse({"status": "Unhealthy"}, status_code=500)

    async def predict(request: Request, model_name: str, model_version: str | None) -> Response:
        body = await read_body(request, limit)
        headers = request.headers
        request_id = headers.get("x-request-id") or f"{id_prefix}{next(id_counter):x}"
        result = await dataplane.infer(
            model_name, model_version, body, headers.get("content-type", ""),
            dict(headers), request_id,
        )
        return Response(result.body, status_code=result.status, media_type=result.content_type,
                         headers={**result.headers, "x-request-id": request_id})

    @app.api_route("/predictions/{model_name}", methods=["POST", "PUT"])
    async def predictions(request: Request, model_name: str) -> Response:
        """Run the model's default version on the request body."""
        return await predict(request, model_name, None)

    @app.api_route("/predictions/{model_name}/{model_version}", methods=["POST", "PUT"])
    async def predictions_version(request: Request, model_name: str,
                                  model_version: str) -> Response:
        """Run one version of the model on the request body."""
        return await predict(request, model_name, model_version)

    return app
