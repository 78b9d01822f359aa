"""Exception handlers: every error leaves as TorchServe's ``{"code", "type", "message"}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from modelserve.errors import ModelServeError
from modelserve.server.transport.http.responses import JSONResponse

log = logging.getLogger("modelserve.http")

_STARLETTE_TYPES = {
    404: ("ResourceNotFoundException",
          "Requested resource is not found, please refer to API document."),
    405: ("MethodNotAllowedException",
          "Requested method is not allowed, please refer to API document."),
}


def error_response(status: int, type_: str, message: str,
                   headers: dict[str, str] | None = None, oip: bool = False) -> JSONResponse:
    """TorchServe's error body; ``oip``: with the Open Inference Protocol's ``error`` too."""
    body = {"code": status, "type": type_, "message": message}
    if oip:
        body["error"] = message
    return JSONResponse(body, status_code=status, headers=headers)


async def _modelserve_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ModelServeError)
    return error_response(exc.status, exc.type, exc.message, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'][1:]) or err['loc'][0]}: {err['msg']}"
        for err in exc.errors()
    )
    return error_response(400, "BadRequestException", f"Invalid parameters: {problems}")


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_, message = _STARLETTE_TYPES.get(exc.status_code, (
        "RequestEntityTooLargeException" if exc.status_code == 413 else "HttpException",
        str(exc.detail)))
    return error_response(exc.status_code, type_, message)


async def _client_gone(_: Request, exc: Exception) -> JSONResponse:
    """The client left (or its body stalled past request_body_timeout) while its body was
    read: nothing to log, and the answer goes nowhere (499 in the access log)."""
    return error_response(499, "ClientDisconnected", "the client disconnected")


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "InternalServerException", f"{type(exc).__name__}: {exc}")


def add_api_description(app: FastAPI) -> None:
    """TorchServe's ``OPTIONS /`` and ``GET /api-description``: the OpenAPI document."""

    async def describe_api(_: Request) -> JSONResponse:
        return JSONResponse(app.openapi())

    app.add_route("/", describe_api, methods=["OPTIONS"], include_in_schema=False)
    app.add_route("/api-description", describe_api, methods=["GET"], include_in_schema=False)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ModelServeError, _modelserve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
