"""TorchServe's workflow APIs: ``/workflows`` on the management port (register, list,
describe, unregister) and ``/wfpredict/{workflow}`` on the inference port, with the query
parameters, bodies and status codes of its WorkflowMgmtRequestHandler and
WorkflowInferenceRequestHandler (0.12). The work is done by ``engine.workflows``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from modelserve.config import Settings
from modelserve.errors import BadRequestError, ModelServeError
from modelserve.server.engine.workflows import Workflows
from modelserve.server.transport.http.body import read_body
from modelserve.server.transport.http.responses import JSONResponse, status_response
from modelserve.server.transport.request_ids import RequestIds
from modelserve.server.transport.torchserve.lenient import java_int, page_args

_REGISTER_PARAMS = [
    {"name": "url", "in": "query", "required": True, "schema": {"type": "string"},
     "description": "The .war in workflow_store (its file name), or an allowed URL."},
    {"name": "workflow_name", "in": "query", "schema": {"type": "string"},
     "description": "Replaces the manifest's workflowName."},
    {"name": "response_timeout", "in": "query", "schema": {"type": "integer"},
     "description": "Seconds, for every node's model."},
    {"name": "startup_timeout", "in": "query", "schema": {"type": "integer"},
     "description": "Seconds, for every node's workers to load."},
]
_PAGE_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
    {"name": "next_page_token", "in": "query", "schema": {"type": "integer"}},
]


def _seconds(params: Mapping[str, Any], key: str, strict: bool) -> float | None:
    """A timeout as RegisterWorkflowRequest reads it; absent or <= 0: the server's default.
    ``strict`` (strict_params): a value that is not an integer is a 400, not the default."""
    raw = params.get(key)
    if isinstance(raw, int) and not isinstance(raw, bool):
        value: int | None = raw
    else:
        value = java_int({key: raw}, key, None) if isinstance(raw, str) else None
        if value is None and raw is not None and strict:
            raise BadRequestError(f"{key} must be an integer number of seconds, not {raw!r}")
    return float(value) if value is not None and value > 0 else None


async def _register_args(request: Request) -> Mapping[str, Any]:
    """The query parameters, or the same keys in a JSON body (which then replaces them)."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        return request.query_params
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"invalid registration body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequestError("the registration body must be a JSON object")
    return body


def _text(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequestError(f"{key} must be a string")
    return value


def add_workflow_management_routes(app: FastAPI, workflows: Workflows) -> None:
    strict = workflows.settings.strict_params

    @app.post("/workflows", openapi_extra={"parameters": _REGISTER_PARAMS})
    async def register_workflow(request: Request) -> JSONResponse:
        """Register a workflow archive (.war): every node of its DAG is registered as the
        model <workflow>__<node> and its workers started before the answer."""
        params = await _register_args(request)
        message = await workflows.register(
            _text(params, "url"), _text(params, "workflow_name") or None,
            _seconds(params, "response_timeout", strict),
            _seconds(params, "startup_timeout", strict))
        return status_response(200, message)

    @app.get("/workflows", openapi_extra={"parameters": _PAGE_PARAMS})
    async def list_workflows(request: Request) -> dict[str, Any]:
        """Registered workflows, sorted by name, paginated."""
        limit, token = page_args(request.query_params)
        return workflows.list_page(limit, token)

    @app.get("/workflows/{workflow_name}")
    async def describe_workflow(workflow_name: str) -> list[dict[str, Any]]:
        """The workflow's archive, global node parameters and DAG."""
        return workflows.describe(workflow_name)

    @app.delete("/workflows/{workflow_name}")
    async def unregister_workflow(workflow_name: str) -> JSONResponse:
        """Unregister the workflow and stop its nodes' workers."""
        return status_response(200, await workflows.unregister(workflow_name))


def add_workflow_inference_routes(app: FastAPI, workflows: Workflows,
                                  settings: Settings) -> None:
    limit, max_response = settings.max_request_size, settings.max_response_size
    request_ids = RequestIds("wf-")

    async def wfpredict(request: Request) -> Response:
        """Run the workflow's DAG on the body; the leaf's output (as JSON), or one JSON
        object of the leaves' outputs by node name."""
        body = await read_body(request, limit)
        headers = dict(request.headers)
        request_id = request_ids.new(headers.get("x-request-id"))
        out = await workflows.predict(request.path_params["workflow_name"], body,
                                      headers.get("content-type", ""), headers, request_id)
        if len(out) > max_response:
            raise ModelServeError(f"response of {len(out)} bytes exceeds max_response_size "
                                  f"({max_response} bytes)")
        return Response(out, media_type="application/json",
                        headers={"x-request-id": request_id})

    app.add_route("/wfpredict/{workflow_name}", wfpredict, methods=["POST", "PUT"])
