"""Management API (TorchServe's, port 8081): register, list, describe, scale, unregister."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from pydantic import ValidationError

from modelserve import __version__
from modelserve.errors import BadRequestError
from modelserve.server.engine.dataplane import DataPlane
from modelserve.server.engine.registration import RegisterRequest
from modelserve.server.transport.http.errors import add_api_description, install_error_handlers
from modelserve.server.transport.http.openapi import document_bearer_auth
from modelserve.server.transport.http.responses import JSONResponse, status_response
from modelserve.server.transport.torchserve import lenient


def create_management_app(dataplane: DataPlane) -> FastAPI:
    app = FastAPI(title="modelserve management API", version=__version__,
                  docs_url=None, redoc_url=None)
    install_error_handlers(app)
    add_api_description(app)

    if dataplane.settings.strict_params:
        _strict_routes(app, dataplane)
    else:
        _lenient_routes(app, dataplane)

    @app.get("/models/{model_name}")
    async def describe(model_name: str, customized: bool = False) -> list[dict[str, Any]]:
        """The default version's configuration and workers; ``customized=true`` adds the
        handler's ``describe_handle`` output."""
        return await dataplane.describe(model_name, None, customized)

    @app.get("/models/{model_name}/{model_version}")
    async def describe_version(model_name: str, model_version: str,
                               customized: bool = False) -> list[dict[str, Any]]:
        """One version, or every version with ``all``."""
        return await dataplane.describe(model_name, model_version, customized)

    @app.put("/models/{model_name}/{model_version}/set-default")
    async def set_default(model_name: str, model_version: str) -> JSONResponse:
        """Make this version the one /predictions/{model} uses."""
        return status_response(200, dataplane.set_default(model_name, model_version))

    @app.delete("/models/{model_name}")
    async def unregister(model_name: str) -> JSONResponse:
        """Unregister the model's default version (it must be its last)."""
        return status_response(200, await dataplane.unregister(model_name, None))

    @app.delete("/models/{model_name}/{model_version}")
    async def unregister_version(model_name: str, model_version: str) -> JSONResponse:
        """Unregister one version and stop its workers."""
        return status_response(200, await dataplane.unregister(model_name, model_version))

    if not dataplane.settings.disable_token_auth:
        document_bearer_auth(app)
    return app


def _strict_routes(app: FastAPI, dataplane: DataPlane) -> None:
    """modelserve's reading (``strict_params: true``): a malformed value is a 400."""

    @app.post("/models")
    async def register(
        query: Annotated[RegisterRequest, Query()],
        body: Annotated[RegisterRequest | None, Body()] = None,
    ) -> JSONResponse:
        """Register a model archive and start its workers (parameters in the query string,
        or the same keys in a JSON body)."""
        code, message = await dataplane.register(body if body is not None else query)
        return status_response(code, message)

    @app.get("/models")
    async def list_models(limit: int = Query(100), next_page_token: int = Query(0, ge=0)
                          ) -> dict[str, Any]:
        """Registered models (default versions), sorted by name, paginated."""
        return dataplane.list_models(100 if limit <= 0 or limit > 100 else limit,
                                     next_page_token)

    async def _scale(model_name: str, model_version: str | None, min_worker: int,
                     max_worker: int | None, synchronous: bool) -> JSONResponse:
        code, message = await dataplane.scale(model_name, model_version, min_worker,
                                              max_worker, synchronous)
        return status_response(code, message)

    @app.put("/models/{model_name}")
    async def scale(model_name: str, min_worker: int = Query(1), max_worker: int | None = None,
                    synchronous: bool = Query(False)) -> JSONResponse:
        """Set the number of workers of the default version."""
        return await _scale(model_name, None, min_worker, max_worker, synchronous)

    @app.put("/models/{model_name}/{model_version}")
    async def scale_version(model_name: str, model_version: str, min_worker: int = Query(1),
                            max_worker: int | None = None,
                            synchronous: bool = Query(False)) -> JSONResponse:
        """Set the number of workers of one version."""
        return await _scale(model_name, model_version, min_worker, max_worker, synchronous)


def _lenient_routes(app: FastAPI, dataplane: DataPlane) -> None:
    """TorchServe's reading (``strict_params: false``, the TorchServe personality): query
    values as its ManagementRequestHandler reads them (see ``lenient``)."""

    @app.post("/models")
    async def register(request: Request) -> JSONResponse:
        """Register a model archive (query parameters, or the same keys in a JSON body,
        which then replaces the query as in TorchServe)."""
        if request.headers.get("content-type", "").startswith("application/json"):
            body = await request.body()
            try:
                req = RegisterRequest.model_validate_json(body)
            except ValidationError as exc:
                raise BadRequestError(f"invalid registration body: {exc.errors()[0]['msg']}"
                                      ) from None
        else:
            req = lenient.register_request(request.query_params)
        code, message = await dataplane.register(req)
        return status_response(code, message)

    @app.get("/models")
    async def list_models(request: Request) -> dict[str, Any]:
        """Registered models (default versions), sorted by name, paginated."""
        limit, token = lenient.page_args(request.query_params)
        return dataplane.list_models(limit, token, token_at_end=True)

    async def scale(request: Request, model_name: str, model_version: str | None
                    ) -> JSONResponse:
        params = request.query_params
        low, high, synchronous = lenient.scale_args(params)
        version = model_version or params.get("model_version") or None
        code, message = await dataplane.scale(model_name, version, low, high, synchronous)
        return status_response(code, message)

    @app.put("/models/{model_name}")
    async def scale_default(request: Request, model_name: str) -> JSONResponse:
        """Set the number of workers of the default version (or of ``model_version``)."""
        return await scale(request, model_name, None)

    @app.put("/models/{model_name}/{model_version}")
    async def scale_version(request: Request, model_name: str,
                            model_version: str) -> JSONResponse:
        """Set the number of workers of one version."""
        return await scale(request, model_name, model_version)
