"""The access log (``access_log: true``): one line per HTTP request, to the
``modelserve.access`` logger (and access_log.log when ``log_dir`` is set).

``access_log_format: json`` writes a JSON object per line; ``torchserve`` writes TorchServe's
line (its ``Session.toString``): remote address, request line, status, milliseconds::

    /127.0.0.1:52314 "POST /predictions/digits HTTP/1.1" 200 4

A pure ASGI middleware, so it costs nothing when off and little when on. Inference routes add
``model``, ``version`` and ``batch_size`` through ``scope["state"]["access"]`` (JSON lines).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

log = logging.getLogger("modelserve.access")
# Set in the scope by the connection's deadline (deadlines.py) when it answered 408 under the
# application: the status the client got, which the line then shows.
STATUS_KEY = "modelserve.status"


def torchserve_line(scope: dict[str, Any], status: int, ms: int) -> str:
    """TorchServe's access line: Java's ``InetSocketAddress.toString()`` (``/IP:PORT``), the
    request's method, raw target and protocol, the status, and whole milliseconds."""
    client = scope.get("client")
    if client:
        host, port = client[0], client[1]
        remote = f"/[{host}]:{port}" if ":" in host else f"/{host}:{port}"
    else:  # a Unix socket: TorchServe's NettyUtils writes 127.0.0.1
        remote = "127.0.0.1"
    target = (scope.get("raw_path") or scope.get("path", "").encode()).decode("latin-1")
    if scope.get("query_string"):
        target += "?" + scope["query_string"].decode("latin-1")
    protocol = f"HTTP/{scope.get('http_version', '1.1')}"
    return f'{remote} "{scope.get("method")} {target} {protocol}" {status} {ms}'


class AccessLog:
    def __init__(self, app: Any, style: str = "json") -> None:
        self.app = app
        self.torchserve = style == "torchserve"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # a log4j2 file that turns ACCESS_LOG down (ts_log4j): no line, so no wrapper either
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
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
            seen["status"] = scope.get(STATUS_KEY, seen["status"])
            if log.isEnabledFor(logging.INFO):  # else the entry would not be written
                elapsed = time.perf_counter() - start
                if self.torchserve:
                    log.info(torchserve_line(scope, seen["status"], int(elapsed * 1000)))
                else:
                    log.info("%s", self._json(scope, seen, elapsed))

    @staticmethod
    def _json(scope: dict[str, Any], seen: dict[str, Any], elapsed: float) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
            "request_id": seen["request_id"],
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": seen["status"],
            "latency_ms": round(elapsed * 1000, 3),
            **scope.get("state", {}).get("access", {}),
        }
        return orjson.dumps(entry).decode()
