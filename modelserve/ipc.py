"""Frontend <-> worker frames: a 4-byte big-endian length, then one msgpack map.

Both sides import this module; it must not import torch. The messages (``op`` key):

frontend -> worker
    ``{"op": "infer", "id": int, "reqs": [[request_id, content_type, body, headers], ...]}``
    an OIP v2 request has a fifth item, ``{"id", "parameters", "outputs": [name] | None,
    "inputs": [[name, datatype, shape, raw bytes], ...]}`` (and an empty body)
    ``{"op": "stop"}``
    ``{"op": "cancel", "id": int, "idx": int}``  (a streamed request's client went away)
worker -> frontend
    ``{"op": "ready", "pid": int, "device": str, "load_ms": float, "signature": dict|None,
    "batch_threads": int, "batch_limit": int|None}``
    (``signature``: the model's OIP v2 metadata, platform, inputs and outputs, when known;
    ``batch_threads``: how many batches it runs at once, modelserve.worker.lanes;
    ``batch_limit``: the largest batch its model takes, when less than the batch size)
    ``{"op": "lanes", "n": int}``  (it now runs ``n`` batches at once)
    ``{"op": "load_failed", "error": str, "status": int}``  (400: the handler is not in the
    archive; 500: anything else)
    ``{"op": "result", "id": int, "out": [[status, content_type, body, headers], ...],
    "ms": float, "metrics": [[type, name, unit, labels, value], ...]}``
    (``metrics`` carries the handler's ``context.metrics`` calls to the frontend's /metrics;
    the answer to a v2 request has a fifth item, its output tensors as
    ``[[name, datatype, shape, raw bytes], ...]``.)
    ``{"op": "chunk", "id": int, "out": [[idx, status, content_type, body, headers, last],
    ...]}``  (streamed answers, before the batch's ``result``; see modelserve.worker.streaming)

``body`` is raw bytes both ways: the frontend never decodes a request body, and the worker
encodes each response once.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
# an answer header: true, more of the request's answer comes at the next step of its
# continuous batch (TorchServe's name; set in the worker, read by the frontend)
STREAM_NEXT = "ts_stream_next"
MAX_FRAME = 1 << 31  # 2 GiB: a frame longer than this is a protocol error, not data

_packer_options: dict[str, Any] = {"use_bin_type": True}


# what msgpack raises for a value it cannot pack: nesting past its limit (ValueError), an
# integer beyond 64 bits (OverflowError), an unknown type (TypeError)
ENCODE_ERRORS = (ValueError, OverflowError, TypeError)


def encode(message: dict[str, Any]) -> bytes:
    """One frame: length prefix + msgpack payload."""
    payload = msgpack.packb(message, **_packer_options)
    return HEADER.pack(len(payload)) + payload


class FrameError(ConnectionError):
    """The peer sent something that is not a frame, or closed the connection mid-frame."""


def decode(payload: bytes | memoryview) -> dict[str, Any]:
    """The message in one payload; anything but a msgpack map is a FrameError."""
    try:
        message = msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # msgpack raises several types (ExtraData, ValueError, ...)
        raise FrameError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(message, dict):
        raise FrameError(f"frame holds a {type(message).__name__}, not a map")
    return message


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Next message, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("connection closed inside a frame header") from exc
        return None
    (length,) = HEADER.unpack(head)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
    try:
        return decode(await reader.readexactly(length))
    except asyncio.IncompleteReadError as exc:
        raise FrameError("connection closed inside a frame") from exc


def recv_exactly(sock: socket.socket, size: int) -> bytearray | None:
    """Blocking read of exactly ``size`` bytes; None if the peer closed before the first byte."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            if got == 0:
                return None
            raise FrameError("connection closed inside a frame")
        got += n
    return buf


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """Blocking counterpart of :func:`read_frame`, for the worker process."""
    head = recv_exactly(sock, HEADER.size)
    if head is None:
        return None
    (length,) = HEADER.unpack(head)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
    payload = recv_exactly(sock, length) if length else bytearray()
    if payload is None:
        raise FrameError("connection closed inside a frame")
    return decode(payload)
