"""The JSON response class of every API: orjson-encoded (NaN and ±Infinity as Python's json
writes them: modelserve.jsonc), no pydantic on the way out."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from modelserve import jsonc


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return jsonc.dumps(content)


def status_response(code: int, message: str) -> JSONResponse:
    """TorchServe's ``{"status": "..."}`` reply."""
    return JSONResponse({"status": message}, status_code=code)
