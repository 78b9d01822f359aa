"""The floor of modelserve's stack: a bare ASGI app on uvicorn with httptools and uvloop (what
modelserve's frontend runs on), no framework, that answers each POST with its own body and
content type. ``overhead_floor.py`` runs it; whatever modelserve spends per request above this
is its own overhead (routing, batching, the worker round trip, logging, metrics).

    python bench/floor_app.py PORT
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"),
                        b"application/octet-stream")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="uvloop",
                log_level="warning", access_log=False, lifespan="off")
