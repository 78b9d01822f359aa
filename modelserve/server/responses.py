"""The JSON response class of every API: orjson-encoded, no pydantic on the way out."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def status_response(code: int, message: str) -> JSONResponse:
    """TorchServe's ``{"status": "..."}`` reply."""
    return JSONResponse({"status": message}, status_code=code)
