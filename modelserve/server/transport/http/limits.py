"""Request body limit for the APIs whose routes read bodies through FastAPI (management).

The inference routes check ``max_request_size`` themselves while reading (transport/http/body.py);
this pure ASGI middleware gives the management API the same 413, before the body is read
whole: at once from ``Content-Length``, or as soon as a chunked body passes the limit.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

from modelserve.server.transport.http.errors import error_response


class _TooLarge(StarletteHTTPException):
    """Raised from ``receive``: FastAPI re-raises HTTPExceptions met while reading a body,
    and the app's handler answers 413 with the usual error body."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds max_request_size ({limit} bytes)")


class BodyLimit:
    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        refusal = error_response(
            413, "RequestEntityTooLargeException",
            f"request body exceeds max_request_size ({self.limit} bytes)",
            {"connection": "close"})
        await refusal(scope, receive, send)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False  # the server's HTTP parser refuses it
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)
