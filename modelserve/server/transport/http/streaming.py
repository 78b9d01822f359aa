"""Streamed answers over HTTP: a :class:`~modelserve.server.engine.streams.Stream` sent to the
client as chunked HTTP (one JSON chunk per line) or as Server-Sent Events, as it comes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from modelserve.errors import ModelServeError
from modelserve.server.engine.streams import Stream

log = logging.getLogger("modelserve.streaming")

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"  # a stream of JSON chunks, one per line


def wants_sse(accept: str | None) -> bool:
    return accept is not None and SSE in accept


def sse_event(body: bytes, event: bytes | None = None) -> bytes:
    """One Server-Sent Events frame: each line of ``body`` as a ``data:`` line."""
    lines = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    head = b"event: " + event + b"\n" if event else b""
    return head + b"".join([b"data: " + line + b"\n" for line in lines]) + b"\n"


async def _watch_disconnect(receive: Any, stream: Stream) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.close()


class StreamingAnswer:
    """ASGI response sending a :class:`Stream` as it comes.

    Chunked HTTP (no Content-Length): each chunk as the handler produced it, except JSON
    chunks, which go out one per line (``application/x-ndjson``). With ``sse``, each chunk is
    one ``data:`` event (``text/event-stream``). The status and headers are the first chunk's.
    An error after the first chunk is logged; an SSE stream then sends an ``event: error``
    with TorchServe's error body and ends, a chunked one ends without its final empty chunk,
    so that the client sees an incomplete body rather than a complete-looking one. A client
    that disconnects closes the stream, which cancels the work in the worker.
    """

    def __init__(self, stream: Stream, request_id: str, sse: bool, max_chunk: int) -> None:
        self.stream = stream
        self.sse = sse
        self.max_chunk = max_chunk
        headers = {**stream.headers, "x-request-id": request_id}
        self.ndjson = False
        if sse:
            headers.update({"content-type": SSE, "cache-control": "no-cache",
                            "x-accel-buffering": "no"})
        elif stream.content_type == "application/json":
            self.ndjson = True
            headers["content-type"] = NDJSON
        else:
            headers["content-type"] = stream.content_type or "application/octet-stream"
        self.raw_headers = [(k.lower().encode("latin-1"), str(v).encode("latin-1"))
                            for k, v in headers.items()]

    def frame(self, body: bytes) -> bytes:
        if self.sse:
            return sse_event(body)
        return body + b"\n" if self.ndjson else body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        stream = self.stream
        watcher = asyncio.ensure_future(_watch_disconnect(receive, stream))
        try:
            await send({"type": "http.response.start", "status": stream.status,
                        "headers": self.raw_headers})
            try:
                async for body in stream:
                    if len(body) > self.max_chunk:
                        raise ModelServeError(
                            f"a chunk of {len(body)} bytes exceeds max_response_size "
                            f"({self.max_chunk} bytes)")
                    await send({"type": "http.response.body", "body": self.frame(body),
                                "more_body": True})
            except ModelServeError as exc:
                if exc is not stream.error:  # (the stream's own error is logged by end())
                    log.error("stream of request %s stopped: %s", stream.request_id,
                              exc.message)
                if not self.sse:
                    return  # no final chunk: the client sees the body is incomplete
                await send({"type": "http.response.body", "more_body": True,
                            "body": sse_event(orjson.dumps(exc.body()), b"error")})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            stream.close()
