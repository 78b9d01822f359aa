"""Inference API (TorchServe's, port 8080): /ping and /predictions/{model}[/{version}].

This is the hot path: the body is read once and handed to the worker as bytes, unparsed.
A handler that streams its answer is sent as chunked HTTP, or as Server-Sent Events when the
client accepts ``text/event-stream`` (modelserve.server.transport.http.streaming).
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

from modelserve import __version__
from modelserve.config import Settings
from modelserve.errors import ModelServeError
from modelserve.server.engine.dataplane import DataPlane
from modelserve.server.engine.jobs import Result
from modelserve.server.transport.http.body import EXPLAIN, read_body
from modelserve.server.transport.http.errors import add_api_description, install_error_handlers
from modelserve.server.transport.http.openapi import document_bearer_auth, document_inference_routes
from modelserve.server.transport.http.responses import JSONResponse
from modelserve.server.transport.http.streaming import StreamingAnswer, wants_sse
from modelserve.server.transport.request_ids import RequestIds
from modelserve.server.transport.v2.core import V2Core
from modelserve.server.transport.v2.rest import add_v2_routes


def create_inference_app(dataplane: DataPlane, settings: Settings,
                         v2: V2Core | None = None) -> FastAPI:
    """TorchServe's routes, and the OIP v2 / KServe v1 routes (``transport.v2.rest``)."""
    app = FastAPI(title="modelserve inference API", version=__version__,
                  docs_url=None, redoc_url=None)
    install_error_handlers(app)
    add_api_description(app)
    limit = settings.max_request_size
    max_response = settings.max_response_size
    access_log = settings.access_log
    request_ids = RequestIds()

    @app.get("/ping")
    async def ping() -> JSONResponse:
        """Healthy when every model has its minimum of ready workers and none is
        crash-looping (TorchServe's rule; 500 Unhealthy otherwise); 503 Draining after
        SIGTERM. Needs no token."""
        if dataplane.draining:
            return JSONResponse({"status": "Draining"}, status_code=503)
        if dataplane.is_healthy():
            return JSONResponse({"status": "Healthy"})
        return JSONResponse({"status": "Unhealthy"}, status_code=500)

    async def forward(request: Request, extra_headers: dict[str, str] | None) -> Response:
        """Hand the body, unparsed, to the model's batcher; answer with the worker's result.

        Routes are plain Starlette endpoints (``app.add_route``): the hot path skips FastAPI's
        dependency solving, which measured as the largest share of frontend CPU per request.
        """
        params = request.path_params
        body = await read_body(request, limit)
        headers = dict(request.headers)
        if extra_headers:
            headers.update(extra_headers)
        if "url_path" in params:  # TorchServe 0.12: the path after the version, for handlers
            headers["url_path"] = params["url_path"]
        request_id = request_ids.new(headers.get("x-request-id"))
        access = None
        if access_log:  # this request's fields in the access log (see AccessLog)
            access = {"model": params["model_name"], "version": params.get("model_version")}
            request.state.access = access
        result = await dataplane.infer(
            params["model_name"], params.get("model_version"), body,
            headers.get("content-type", ""), headers, request_id,
        )
        if access is not None:
            access["batch_size"] = result.batch_size
        if result.__class__ is not Result:  # the handler streams its answer
            return StreamingAnswer(result, request_id,  # type: ignore[return-value]
                                   wants_sse(headers.get("accept")), max_response)
        if len(result.body) > max_response:
            raise ModelServeError(
                f"response of {len(result.body)} bytes exceeds max_response_size "
                f"({max_response} bytes)")
        return Response(result.body, status_code=result.status, media_type=result.content_type,
                        headers={**result.headers, "x-request-id": request_id})

    async def predictions(request: Request) -> Response:
        """Run a model (its default version, or the one in the path) on the request body."""
        return await forward(request, None)

    app.state.predictions = predictions  # also served in front of FastAPI: fast_path.py

    async def explanations(request: Request) -> Response:
        """TorchServe's ``/explanations``: the handler's ``explain_handle`` on the body."""
        return await forward(request, EXPLAIN)

    # /{model}/{version}/{any/path}: TorchServe routes it to the model and gives the handler
    # the rest as its url_path header (InferenceRequestHandler.handlePredictions), which is how
    # OpenAI-style routes are served
    versioned = ("/{model_name}", "/{model_name}/{model_version}",
                 "/{model_name}/{model_version}/{url_path:path}")
    for path in versioned:
        app.add_route("/predictions" + path, predictions, methods=["POST", "PUT"])
        app.add_route("/explanations" + path, explanations, methods=["POST", "PUT"])

    add_v2_routes(app, v2 or V2Core(dataplane), limit, max_response)
    document_inference_routes(app)
    if not settings.disable_token_auth:
        document_bearer_auth(app)
    return app
