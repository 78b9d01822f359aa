"""Management API (TorchServe's, port 8081): register, list, describe, scale, unregister."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, FastAPI, Query

from modelserve import __version__
from modelserve.server.engine.dataplane import DataPlane
from modelserve.server.engine.registration import RegisterRequest
from modelserve.server.transport.http.errors import add_api_description, install_error_handlers
from modelserve.server.transport.http.openapi import document_bearer_auth
from modelserve.server.transport.http.responses import JSONResponse, status_response


def create_management_app(dataplane: DataPlane) -> FastAPI:
    app = FastAPI(title="modelserve management API", version=__version__,
                  docs_url=None, redoc_url=None)
    install_error_handlers(app)
    add_api_description(app)

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
        return dataplane.list_models(limit, next_page_token)

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
