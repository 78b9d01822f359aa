"""JSON-lines access log (``access_log: true``): one line per HTTP request.

A pure ASGI middleware, so it costs nothing when off and little when on. Inference routes add
``model``, ``version`` and ``batch_size`` through ``scope["state"]["access"]``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

log = logging.getLogger("modelserve.access")


class AccessLog:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "request_id": None}

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for key, value in message.get("headers", ()):
                    if key == b"x-request-id":
                        seen["request_id"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            if log.isEnabledFor(logging.INFO):  # else the entry would not be written
                entry = {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                    "request_id": seen["request_id"],
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": seen["status"],
                    "latency_ms": round((time.perf_counter() - start) * 1000, 3),
                    **scope.get("state", {}).get("access", {}),
                }
                log.info("%s", orjson.dumps(entry).decode())
