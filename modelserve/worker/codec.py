"""Request bodies in, handler results out: TorchServe's decoding and encoding rules.

In: each request becomes one dict, ``{"body": value}`` (or one key per multipart/urlencoded
form field), where value is parsed JSON for ``application/json``, ``str`` for ``text/*`` and
raw bytes otherwise. Out: bytes pass through, str is UTF-8, anything else is JSON (orjson;
NaN and ±Infinity as Python's json reads and writes them: modelserve.jsonc).
An exception in place of a result becomes that request's error response.
"""

from __future__ import annotations

import inspect
import re
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qsl

import orjson

from modelserve import jsonc
from modelserve.handlers.errors import BadInputError
from modelserve.worker.context import Context

JSON = "application/json"
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class StreamFound(Exception):
    """A result is a generator: the worker streams the batch (modelserve.worker.streaming)."""


def _looks_like_json(body: bytes) -> bool:
    head = body[:64].lstrip()
    return head[:1] in (b"[", b"{")


def _parse_json(body: bytes) -> Any:
    try:
        return jsonc.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInputError(f"request body is not valid JSON: {exc}") from None


def _decode_value(content_type: str, body: bytes) -> Any:
    if content_type.startswith(JSON) or content_type.endswith("+json"):
        return _parse_json(body)
    if content_type.startswith("text/"):
        return body.decode("utf-8", errors="replace")
    return body


def _decode_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise BadInputError("multipart body could not be parsed (check the boundary)")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition") or "data"
        payload = part.get_payload(decode=True) or b""
        if part.get("content-type") is None and part.get_filename() is not None:
            # a file part with no type (python-requests' files=): bytes, as TorchServe's
            # FileUpload; email would call it text/plain
            fields[str(name)] = payload
            continue
        fields[str(name)] = _decode_value(part.get_content_type(), payload)
    return fields


# text (no control characters) whose first field has a name and an "=": what Netty's decoder
# and parse_qsl split into fields (spaces, "/", ":" and non-ASCII included)
_FORM = re.compile(rb"[^=&\x00-\x1f\x7f]+=[^&\x00-\x1f\x7f]*(&[^&\x00-\x1f\x7f]*)*")


def _form(body: bytes) -> dict[str, str] | None:
    """The fields of an urlencoded form, or None for a body that is no form at all (binary
    data, or text without a ``name=`` first field)."""
    if not _FORM.fullmatch(body):
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return dict(parse_qsl(text, keep_blank_values=True))


def decode_request(content_type: str, body: bytes) -> dict[str, Any]:
    """One request's handler input, as TorchServe builds it (``decode_input_request``)."""
    ct = (content_type or "").lower()
    if ct.startswith("multipart/form-data"):
        return _decode_multipart(content_type, body)
    if ct.startswith("application/x-www-form-urlencoded"):
        # curl -d sends JSON with this type; take it as JSON when it is JSON
        if _looks_like_json(body):
            return {"body": _parse_json(body)}
        form = _form(body)
        if form is not None:
            return form
        # curl -d "some text" and --data-binary @cat.jpg send this type too: a body that is
        # not a form is the request's payload, text when it is UTF-8 (TorchServe would split
        # it into nonsense fields and the handler would find no data)
        try:
            return {"body": body.decode("utf-8")}
        except UnicodeDecodeError:
            return {"body": body}
    return {"body": _decode_value(ct, body)}


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # torch tensors, numpy scalars
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def error_response(exc: BaseException) -> list[Any]:
    """``[status, content_type, body, headers]`` for a handler error."""
    code = getattr(exc, "error_code", None)
    if isinstance(code, int) and 400 <= code < 600:
        status, message = code, getattr(exc, "message", None) or str(exc)
    elif isinstance(exc, MemoryError):
        status, message = 507, "Out of resources"
    else:
        status, message = 500, f"Prediction failed: {type(exc).__name__}: {exc}"
    kind = "BadRequestException" if status < 500 else "InternalServerException"
    body = orjson.dumps({"code": status, "type": kind, "message": message})
    return [status, JSON, body, {}]


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what uvicorn refuses in a header value
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})  # the server's
_NO_BODY = frozenset({204, 205, 304})


def _response_head(ctx: Context, idx: int) -> tuple[int, dict[str, str]]:
    """The status and headers the handler set for request ``idx``; ValueError for what an
    HTTP response cannot carry (it would otherwise break the connection in the frontend)."""
    status = (ctx.get_response_status(idx) or (200, ""))[0]
    if type(status) is not int or not 200 <= status <= 599:
        raise ValueError(f"response status {status!r} is not an integer from 200 to 599")
    headers = {}
    for name, value in ctx.get_response_headers(idx).items():
        if name in _FRAMING:
            continue
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"response header name {name!r} is not an HTTP token")
        if _CONTROL.search(value) or not value.isascii() and not _latin1(value):
            raise ValueError(f"response header {name} value {value[:100]!r} has control "
                             "characters or characters outside Latin-1")
        headers[name] = value
    return status, headers


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def encode_response(result: Any, idx: int, ctx: Context) -> list[Any]:
    """``[status, content_type, body, headers]`` for one handler result."""
    if isinstance(result, BaseException):
        return error_response(result)
    try:
        status, headers = _response_head(ctx, idx)
    except ValueError as exc:
        return error_response(ValueError(f"the handler's response cannot be sent: {exc}"))
    content_type = headers.pop("content-type", None)
    if status in _NO_BODY:  # HTTP forbids a body with these
        return [status, content_type or "text/plain", b"", headers]
    if isinstance(result, (bytes, bytearray, memoryview)):
        return [status, content_type or "application/octet-stream", bytes(result), headers]
    if isinstance(result, str):
        return [status, content_type or "text/plain; charset=utf-8", result.encode(), headers]
    try:
        body = jsonc.dumps(result, default=_default, option=_JSON_OPTIONS)
    except TypeError as exc:
        if inspect.isgenerator(result) or inspect.isasyncgen(result):
            raise StreamFound from None
        return error_response(TypeError(f"handler result cannot be encoded as JSON: {exc}"))
    return [status, content_type or JSON, body, headers]
