"""Streamed answers, frontend side: chunks from a worker to a client as they come.

A worker streams an answer with ``chunk`` frames (see ``modelserve.worker.streaming`` for the
handler contract): the first chunk of a request resolves its job with a :class:`Stream`
instead of a ``Result``, carrying the first chunk's status, content type and headers; later
chunks are pushed onto it, and the entry marked ``last`` (or the batch's ``result`` frame)
ends it. An error after the first chunk ends the stream with that error. A consumer that goes
away calls :meth:`Stream.close`, which tells the worker (a ``cancel`` frame) to stop producing.

Transports read a stream with ``async for body in stream`` (raises the error that ended it,
if any): ``transport.http.streaming.StreamingAnswer`` sends it as chunked HTTP or as
Server-Sent Events, and ``DataPlane.infer_stream`` gives any transport (gRPC server streaming)
the chunks as Results.
Chunks are not held back for a slow client: they wait in memory until sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from modelserve.errors import ModelServeError
from modelserve.server.engine.jobs import Job, Result

log = logging.getLogger("modelserve.streaming")

class Stream:
    """One request's streamed answer: fed by its worker, read by one transport."""

    __slots__ = ("status", "content_type", "headers", "batch_size", "request_id", "done",
                 "error", "_chunks", "_wake", "_cancel", "_on_close", "_closed")

    def __init__(self, status: int, content_type: str, headers: dict[str, str],
                 batch_size: int, request_id: str, cancel: Callable[[], None]) -> None:
        self.status = status
        self.content_type = content_type
        self.headers = headers
        self.batch_size = batch_size
        self.request_id = request_id
        self.done = False
        self.error: ModelServeError | None = None
        self._chunks: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._cancel = cancel
        self._on_close: list[Callable[[], None]] = []
        self._closed = False

    # -- producer (the worker connection) ----------------------------------------------------
    def push(self, body: bytes) -> None:
        if not self.done and body:
            self._chunks.append(body)
            self._wake.set()

    def end(self, error: ModelServeError | None = None) -> None:
        if not self.done:
            self.done = True
            self.error = error
            self._wake.set()
            if error is not None:
                log.error("stream of request %s ended by an error after its first chunk: "
                          "%s (%s)", self.request_id, error.message, error.status)

    # -- consumer (a transport) --------------------------------------------------------------
    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the consumer is done with the stream."""
        self._on_close.append(callback)

    def close(self) -> None:
        """The consumer is done (last chunk sent, an error, or the client went away): if the
        stream is still open, the worker is told to stop it."""
        if not self.done:
            self.done = True
            self._chunks.clear()
            self._wake.set()
            self._cancel()
        if not self._closed:
            self._closed = True
            for callback in self._on_close:
                callback()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                yield self._chunks.popleft()
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            self._wake.clear()
            await self._wake.wait()


def feed(streams: dict[int, Stream | None], jobs: list[Job], entry: list[Any],
         cancel: Callable[[int], None]) -> None:
    """One ``[idx, status, content_type, body, headers, last]`` entry of a chunk frame.

    ``streams`` is the batch's state: a Stream per streamed request, None for a request
    answered whole (an entry both first and last: an ordinary answer, errors included).
    """
    idx, status, content_type, body, headers, last = entry
    if idx >= len(jobs):
        return
    if idx not in streams:
        job = jobs[idx]
        if last:
            streams[idx] = None
            job.resolve(Result(status, content_type, body, headers, len(jobs)))
            return
        stream = Stream(status, content_type, headers, len(jobs), job.request_id,
                        lambda: cancel(idx))
        stream.push(body)
        streams[idx] = stream
        if job.future.done():  # cannot happen while the batch is in flight; never leak work
            stream.close()
        job.resolve(stream)  # type: ignore[arg-type]
        return
    stream = streams[idx]
    if stream is None:
        return
    if status >= 400:
        stream.end(ModelServeError.from_body(status, body))
        return
    stream.push(body)
    if last:
        stream.end()


def finish(streams: dict[int, Stream | None], jobs: list[Job], out: list[list[Any]],
           missing: ModelServeError) -> None:
    """The batch's ``result`` frame after chunks: it answers what no chunk answered and ends
    any stream still open (its ``out`` entry is the last chunk, or the error)."""
    for idx, job in enumerate(jobs):
        state = streams.get(idx, job)
        entry = out[idx] if idx < len(out) else None
        if state is job:
            if entry is None:
                job.fail(missing)
            else:
                job.resolve(Result(*entry[:4], len(jobs), entry[4] if len(entry) > 4 else None))
        elif isinstance(state, Stream) and not state.done:
            if entry is None:
                state.end(missing)
            elif entry[0] >= 400:
                state.end(ModelServeError.from_body(entry[0], entry[2]))
            else:
                state.push(entry[2])
                state.end()


def fail(streams: dict[int, Stream | None] | None, error: ModelServeError) -> None:
    """The worker died or timed out: end the batch's open streams with ``error``."""
    for state in (streams or {}).values():
        if state is not None:
            state.end(error)
