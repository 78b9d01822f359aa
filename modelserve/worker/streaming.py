"""Streamed answers, worker side: send a handler's chunks as they come; stop on a cancel.

A handler streams in one of three ways (README, "Streaming responses"):

1. ``handle`` (or ``postprocess``, whose return ``BaseHandler.handle`` passes on) returns a
   **list with one entry per request** in which some entries are generators or async
   generators: each yielded item is one chunk of that request's answer; the batch's
   generators advance in turn, one item each per round. Other entries are ordinary answers,
   sent at once.
2. ``handle`` returns (or is) **one generator or async generator for the whole batch**: each
   yielded item is a list with one entry per request, that step's chunk for each (``None``:
   no chunk for that request in this step). Every request's stream ends with the generator.
3. TorchServe's ``send_intermediate_predict_response(ret, req_id_map, message, code,
   context)`` (importable as ``ts.handler_utils.utils`` or ``ts.protocol.otf_message_handler``),
   called with one entry of ``ret`` per request; the list ``handle`` finally returns is each
   request's last chunk.

Chunks are encoded like answers (bytes raw, str UTF-8, anything else JSON). Frames to the
frontend (``modelserve.ipc``): ``{"op": "chunk", "id": batch, "out": [[idx, status,
content_type, body, headers, last], ...]}``. An entry with ``last`` ends that request's
stream; one that is both first and last is an ordinary answer (this is how an error before the
first chunk keeps its status). The frontend's ``{"op": "cancel", "id", "idx"}`` (the client
went away) is read between chunks: that request's generator is closed; when every request of
the batch is cancelled, case 2's generator is closed and ``send_intermediate_predict_response``
raises :class:`StreamCancelled` to end the handler. A generator blocked inside one step is not
interrupted: the frontend's ``response_timeout`` (the time allowed between chunks) covers it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from modelserve.worker.channel import Channel
from modelserve.worker.codec import StreamFound, encode_response, error_response

log = logging.getLogger("modelserve.worker.streaming")

_active = threading.local()  # .streamer: the streamer of the batch lane on this thread


class StreamCancelled(BaseException):
    """Every request of the batch was cancelled; raised inside the handler to end it.

    A BaseException (like GeneratorExit), so a handler's ``except Exception`` lets it through.
    """


def is_stream(value: Any) -> bool:
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


class Streamer:
    """Sends the chunk frames of one batch lane's current batch and watches its cancels
    (which the channel takes in, whichever lane reads them)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.batch_id = -1
        self.size = 0
        self.offset = 0  # position of the handler's request 0 in the batch (retry-alone path)
        self.index: list[int] | None = None  # the handler's requests' positions (a subset)
        self.active = False  # chunks of this batch went out
        self.cancelled: set[int] = set()
        self.finished: set[int] = set()  # positions whose last chunk went out
        self._loop: asyncio.AbstractEventLoop | None = None

    def begin(self, batch_id: int, size: int) -> None:
        self.batch_id = batch_id
        self.size = size
        self.offset = 0
        self.index = None
        self.cancelled = self.channel.begin(batch_id)
        if self.active or self.finished:
            self.active = False
            self.finished = set()

    def end(self) -> None:
        self.channel.end(self.batch_id)

    # -- frames ------------------------------------------------------------------------------
    def _send(self, entries: list[list[Any]]) -> None:
        if entries:
            self.active = True
            for entry in entries:
                if entry[5]:
                    self.finished.add(entry[0])
            self.channel.send({"op": "chunk", "id": self.batch_id, "out": entries})

    def poll(self) -> None:
        """Take in whatever the frontend sent, without waiting."""
        self.channel.poll()
        if self.channel.closed:  # the frontend is gone or stopping: stop streaming
            self.cancelled.update(range(self.size))

    def at(self, idx: int) -> int:
        """The batch position of the handler's request ``idx``."""
        return self.offset + (self.index[idx] if self.index is not None else idx)

    @contextmanager
    def subset(self, positions: list[int]) -> Iterator[None]:
        """The handler sees only these requests (positions in the current view) of the batch:
        the TorchServe or the OIP v2 requests of a mixed batch, the v2 requests that decoded."""
        outer = self.index
        self.index = [outer[p] if outer is not None else p for p in positions]
        try:
            yield
        finally:
            self.index = outer

    def _open(self, pos: int) -> bool:
        return pos not in self.cancelled and pos not in self.finished

    # -- encoding ----------------------------------------------------------------------------
    def _entry(self, item: Any, idx: int, ctx: Any, last: bool,
               status: int | None = None) -> list[Any]:
        """``[position, status, content_type, body, headers, last]`` for one chunk."""
        try:
            out = encode_response(item, idx, ctx)
        except StreamFound:
            out = error_response(TypeError("a chunk cannot itself be a generator"))
        if out[0] >= 400:
            last = True  # an error ends the request's stream
        elif status is not None and ctx.get_response_status(idx) is None and out[0] == 200:
            out[0] = status
        return [self.at(idx), *out, last]

    def _end(self, idx: int) -> list[Any]:
        return [self.at(idx), 200, "application/octet-stream", b"", {}, True]

    def _error(self, idx: int, exc: BaseException) -> list[Any]:
        return [self.at(idx), *error_response(exc), True]

    def placeholders(self, n: int) -> list[list[Any]]:
        """The result frame's ``out`` for a streamed batch: every request already ended."""
        return [[200, "application/octet-stream", b"", {}] for _ in range(n)]

    # -- driving generators ------------------------------------------------------------------
    def _next(self, gen: Any) -> Any:
        """The generator's next item; StopIteration when it is exhausted."""
        if inspect.isgenerator(gen):
            return next(gen)
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            return self._loop.run_until_complete(gen.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def _close(self, gen: Any) -> None:
        try:
            if inspect.isgenerator(gen):
                gen.close()
            else:
                if self._loop is None:
                    self._loop = asyncio.new_event_loop()
                self._loop.run_until_complete(gen.aclose())
        except Exception as exc:
            log.warning("closing a cancelled stream raised: %s", exc)

    def run_list(self, results: list[Any], ctx: Any,
                 whole: Callable[[int, Any], list[Any]] | None = None) -> list[list[Any]]:
        """Case 1: a list whose entries may be generators, one per request. ``whole``, if
        given, answers the entries that are not generators in the result frame (OIP v2
        answers, whose tensors a chunk does not carry) instead of as chunks."""
        gens: dict[int, Any] = {}
        entries: list[list[Any]] = []
        out = self.placeholders(len(results))
        for idx, result in enumerate(results):
            if is_stream(result):
                gens[idx] = result
            elif whole is not None:
                out[idx] = whole(idx, result)
            else:
                entries.append(self._entry(result, idx, ctx, True))
        self._send(entries)
        while gens:
            self.poll()
            for idx in [i for i in gens if self.at(i) in self.cancelled]:
                self._close(gens.pop(idx))
            entries = []
            for idx, gen in list(gens.items()):
                try:
                    item = self._next(gen)
                except StopIteration:
                    entries.append(self._end(idx))
                    del gens[idx]
                except Exception as exc:
                    _log_failure(exc)
                    entries.append(self._error(idx, exc))
                    del gens[idx]
                else:
                    entry = self._entry(item, idx, ctx, False)
                    entries.append(entry)
                    if entry[5]:
                        self._close(gens.pop(idx))
            self._send(entries)
        return out

    def run_steps(self, gen: Any, n: int, ctx: Any) -> list[list[Any]]:
        """Case 2: one generator for the batch, yielding a list (one chunk per request)."""
        self.active = True  # even before the first chunk: no retry-alone of a generator
        try:
            while True:
                self.poll()
                if all(not self._open(self.at(i)) for i in range(n)):
                    self._close(gen)
                    break
                try:
                    step = self._next(gen)
                except StopIteration:
                    break
                if not isinstance(step, (list, tuple)) or len(step) != n:
                    got = len(step) if isinstance(step, (list, tuple)) else type(step).__name__
                    self._close(gen)
                    raise TypeError(f"a streaming handler must yield a list of {n} chunks "
                                    f"(one per request), got {got}")
                self._send([self._entry(item, idx, ctx, False) for idx, item in enumerate(step)
                            if item is not None and self._open(self.at(idx))])
        except Exception as exc:
            _log_failure(exc)
            return self.fail(exc, n)
        self._send([self._end(i) for i in range(n) if self._open(self.at(i))])
        return self.placeholders(n)

    def finish(self, results: list[Any], ctx: Any) -> list[list[Any]]:
        """Case 3: after intermediate responses, the returned list is each last chunk."""
        self._send([self._entry(result, idx, ctx, True) for idx, result in enumerate(results)
                    if self._open(self.at(idx))])
        return self.placeholders(len(results))

    def fail(self, exc: BaseException, n: int) -> list[list[Any]]:
        """End every open stream of the batch with the error (its status when none began)."""
        self._send([self._error(i, exc) for i in range(n) if self._open(self.at(i))])
        return self.placeholders(n)

    def intermediate(self, ret: list[Any], req_id_map: dict[int, str], code: int,
                     ctx: Any) -> None:
        """Case 3: one chunk per request named in ``req_id_map`` (TorchServe's indexing)."""
        self.poll()
        n = len(getattr(ctx, "request_ids", None) or req_id_map)
        if all(not self._open(self.at(i)) for i in range(n)):
            raise StreamCancelled()
        positions = {rid: idx for idx, rid in (getattr(ctx, "request_ids", None) or {}).items()}
        entries = []
        for key, rid in req_id_map.items():
            idx = positions.get(rid, key)
            if self._open(self.at(idx)):
                entries.append(self._entry(ret[key], idx, ctx, False, status=code))
        self.active = True
        self._send(entries)


def _log_failure(exc: BaseException) -> None:
    log.warning("streaming handler failed: %s", "".join(traceback.format_exception_only(exc)))


def install(streamer: Streamer) -> None:
    """``streamer`` serves the TorchServe streaming call made on this thread."""
    _active.streamer = streamer


def send_intermediate_predict_response(ret: list[Any], req_id_map: dict[int, str], message: str,
                                       code: int, context: Any = None) -> None:
    """TorchServe's streaming call: send ``ret[i]`` now as a chunk of request ``req_id_map[i]``.

    ``message`` is TorchServe's status message (unused: HTTP carries no per-chunk message);
    ``code`` is the HTTP status when this is the request's first chunk.
    """
    streamer: Streamer | None = getattr(_active, "streamer", None)
    if streamer is None:
        raise RuntimeError("send_intermediate_predict_response is only available in a worker")
    streamer.intermediate(ret, req_id_map, code, context)
