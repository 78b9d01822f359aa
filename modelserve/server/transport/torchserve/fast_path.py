"""``POST /predictions/{model}[/{version}]`` answered in front of FastAPI's own layers.

A request for a small model costs the frontend ~0.12 ms of CPU, and FastAPI's middleware
stack, router and exception wrappers around the endpoint were ~9 % of it (py-spy at 7k req/s,
issue 19). This ASGI app takes the two plain predictions paths straight to the same endpoint
(``inference.py``) and answers its errors through the app's own exception handlers, so the
answer is the one FastAPI would give; every other request, and any path it does not take
(a trailing slash, ``url_path``, another method), goes to FastAPI unchanged. The outer
middlewares (status counter, token auth, CORS, access log) still see every request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

Endpoint = Callable[[Request], Awaitable[Response]]
_METHODS = frozenset({"POST", "PUT"})


class PredictionsFastPath:
    def __init__(self, app: FastAPI, endpoint: Endpoint) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in _METHODS:
            parts = scope["path"].split("/")  # "", "predictions", model[, version]
            if 3 <= len(parts) <= 4 and parts[1] == "predictions" and all(parts[2:]):
                params = {"model_name": parts[2]}
                if len(parts) == 4:
                    params["model_version"] = parts[3]
                scope["app"] = self.app  # what FastAPI sets: request.app, url_for
                scope["path_params"] = params
                request = Request(scope, receive, send)
                try:
                    response = await self.endpoint(request)
                except Exception as exc:
                    response = await self._handled(request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _handled(self, request: Request, exc: Exception) -> Response:
        """The response the app's exception handler for ``exc`` gives (the nearest class in
        its MRO, as Starlette looks them up); re-raised when the app has none."""
        handlers = self.app.exception_handlers
        for cls in type(exc).__mro__:
            handler = handlers.get(cls)
            if handler is not None:
                return await handler(request, exc)  # type: ignore[no-any-return]
        raise exc
