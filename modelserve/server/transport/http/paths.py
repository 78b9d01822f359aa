"""Trailing slashes: ``/models/x/`` is ``/models/x``, as in TorchServe.

TorchServe splits the path on ``/`` and Java drops the trailing empty part, so scripts that
send ``DELETE /models/x/`` work there; Starlette would answer a 307 redirect instead, which a
client following it turns into a second request (and some do not follow redirects for DELETE).
This pure ASGI middleware strips them before routing, for the management API.
"""

from __future__ import annotations

from typing import Any


class TrailingSlash:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
            if scope.get("raw_path"):
                scope["raw_path"] = scope["raw_path"].rstrip(b"/") or b"/"
        await self.app(scope, receive, send)
