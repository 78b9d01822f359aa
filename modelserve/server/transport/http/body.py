"""Request bodies, read once and bounded, for every HTTP API."""

from __future__ import annotations

from fastapi import Request

from modelserve.errors import BadRequestError, RequestTooLargeError


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequestError(f"invalid Content-Length header: {declared!r}") from None
        if size > limit:
            raise RequestTooLargeError(
                f"request body of {size} bytes exceeds max_request_size ({limit} bytes)"
            )
        return await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(f"request body exceeds max_request_size ({limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


EXPLAIN = {"explain": "True"}  # the request header TorchServe's handlers route on
