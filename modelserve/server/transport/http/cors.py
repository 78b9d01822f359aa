"""CORS as TorchServe sends it: fixed Access-Control-Allow-* headers on every response.

TorchServe (``NettyUtils.sendHttpResponse``) adds ``cors_allowed_origin``,
``cors_allowed_methods`` and ``cors_allowed_headers``, each when set and not empty, to every
response of every HTTP listener, errors included, unless the response already has that
header; it never compares them with the request's ``Origin``. It has no preflight handler of
its own: an ``OPTIONS`` request goes to the route, and ``OPTIONS /`` is the API description.

Here ``OPTIONS /`` stays the API description (with the headers). Any other preflight (an
``OPTIONS`` request with ``Origin`` and ``Access-Control-Request-Method``) is answered 200
by this middleware, before token authorization: a browser's preflight never carries the
``Authorization`` header, and TorchServe's routes would answer it 401, 404 or 405. Other
``OPTIONS`` requests reach the routes as before.
"""

from __future__ import annotations

from typing import Any

from modelserve.config import Settings

__all__ = ["Cors", "cors_headers", "with_cors"]

_NAMES = (
    (b"access-control-allow-origin", "cors_allowed_origin"),
    (b"access-control-allow-methods", "cors_allowed_methods"),
    (b"access-control-allow-headers", "cors_allowed_headers"),
)


def cors_headers(settings: Settings) -> list[tuple[bytes, bytes]]:
    """The configured Access-Control-Allow-* headers; empty when CORS is off (the default)."""
    headers = []
    for name, field in _NAMES:
        value = getattr(settings, field)
        if value:
            headers.append((name, value.encode("latin-1")))
    return headers


def _is_preflight(scope: dict[str, Any]) -> bool:
    if scope["method"] != "OPTIONS":
        return False
    names = {name for name, _ in scope["headers"]}
    return b"origin" in names and b"access-control-request-method" in names


class Cors:
    """Pure ASGI middleware: the headers on every response; preflights answered (see the
    module). ``describes_root``: the app serves ``OPTIONS /`` (its API description)."""

    def __init__(self, app: Any, headers: list[tuple[bytes, bytes]],
                 describes_root: bool = True) -> None:
        self.app = app
        self.headers = headers
        self.describes_root = describes_root

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _is_preflight(scope) and not (self.describes_root and scope["path"] == "/"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [*self.headers, (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in self.headers if n not in present]
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def with_cors(app: Any, settings: Settings, describes_root: bool = True) -> Any:
    """``app`` wrapped in ``Cors`` when a cors_allowed_* setting is set, else ``app`` itself."""
    headers = cors_headers(settings)
    return Cors(app, headers, describes_root) if headers else app
