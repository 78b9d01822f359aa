"""JSON that carries NaN and ±Infinity the way Python's ``json``, TorchServe and Triton do.

Strict JSON has no token for them; Python's ``json`` (TorchServe's handlers and clients) and
Triton (rapidjson with its NaN/Inf flags) read and write ``NaN``, ``Infinity`` and
``-Infinity``. orjson, our fast path, refuses those tokens and writes ``null`` in their place,
which loses the value silently and breaks clients that send NaN for a missing feature. So
orjson stays the fast path, and the standard library is used only when a body holds one of
those tokens (reading) or orjson wrote a ``null`` (writing).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

_TOKENS = (b"NaN", b"Infinity")


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON, accepting ``NaN``, ``Infinity`` and ``-Infinity``; raises
    ``orjson.JSONDecodeError`` (orjson's message) for anything else that is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if not any(token in raw for token in _TOKENS):
            raise
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise exc from None


def dumps(obj: Any, *, default: Callable[[Any], Any] | None = None, option: int = 0) -> bytes:
    """orjson's encoding, unless ``obj`` holds a non-finite float: then the standard
    library's, which writes it as ``NaN``/``Infinity`` (orjson would write ``null``)."""
    body = orjson.dumps(obj, default=default, option=option)
    if b"null" not in body:  # nothing was turned into null
        return body
    try:
        json.dumps(obj, default=default, allow_nan=False)
        return body  # every null was a None
    except ValueError:  # "Out of range float values": NaN or ±Infinity
        pass
    except (TypeError, RecursionError):  # what only orjson encodes (dataclasses, dates, …)
        return body
    try:
        return json.dumps(obj, default=default, separators=(",", ":"),
                          ensure_ascii=False).encode()
    except (TypeError, ValueError, RecursionError):
        return body
