"""TorchServe's request envelopes (``service_envelope``): KServe bodies in, KServe answers out.

With ``service_envelope`` set, TorchServe's worker wraps the handler's ``handle`` in an envelope
(its ``ts/torch_handler/request_envelope/``): the envelope unwraps each request's body into the
rows of the handler's batch and wraps the handler's results back into the protocol's answer.
Handlers written for KServe's TorchServe runtime expect exactly those rows, so the same four
envelopes are here:

- ``body``: each request's ``data`` or ``body`` field is a row; results go back unchanged.
- ``json`` (TensorFlow Serving's REST shape): each of ``{"instances": [...]}`` is a row
  (``{"b64": ...}`` values decoded to bytes); a request gets ``{"predictions": [...]}``.
- ``kserve`` (KServe v1): each of ``{"instances": [...]}`` is a row, as sent; a request gets
  ``{"predictions": [...]}``, or ``{"explanations": [...]}`` when its ``explain`` header is
  ``True`` (``/v1/models/{m}:explain``, ``/explanations/{m}``).
- ``kservev2`` (Open Inference Protocol v2): each input tensor of ``{"inputs": [...]}`` is a row
  ``{"name", "shape", "datatype", "data"}``, its data reshaped into nested lists (BYTES: the
  first element only); result i becomes the output tensor named after input i, flattened:
  ``{"id", "model_name", "model_version", "outputs": [{"name", "datatype", "data", "shape"}]}``.

Where this differs from TorchServe, on purpose: TorchServe's kserve and kservev2 envelopes read
only the first request of a batch, so a batch of several requests fails whole (503 "number of
batch response mismatched"); here every request of a batch is unwrapped, the handler runs once
on all their rows, and each request gets its own rows' results. A body that is not the
envelope's shape is that request's 400, naming what is wrong (TorchServe: 503 "Prediction
failed" from inside the envelope), and the batch's other requests are still answered.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import orjson

from modelserve import jsonc
from modelserve.datatypes import TensorError, datatype_of
from modelserve.handlers.errors import BadInputError
from modelserve.worker.context import Context

Entry = Callable[[Any, Context], Any]
NAMES = ("body", "json", "kserve", "kservev2")



@dataclass
class Parsed:
    """One request, unwrapped: its rows for the handler and what its answer needs."""

    rows: list[Any]
    request_id: str | None = None  # kservev2: the body's ``id``
    names: list[str] = field(default_factory=list)  # kservev2: the input names, row by row


def _payload(row: Any, whole: bool = False) -> Any:
    """A request's body as TorchServe's envelopes read it: its ``data`` or ``body`` field
    (``whole``: else the row itself), JSON text parsed (bytes: a gRPC or non-JSON body)."""
    value = (row.get("data") or row.get("body")) if isinstance(row, dict) else None
    if value is None and whole:
        value = row
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = jsonc.loads(bytes(value))
        except orjson.JSONDecodeError as exc:
            raise BadInputError(f"request body is not valid JSON: {exc}") from None
    return value


def _instances(body: Any) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        raise BadInputError('the body must be a JSON object {"instances": [...]}')
    if not body["instances"]:
        raise BadInputError("'instances' must be a non-empty list")
    return list(body["instances"])


class Envelope:
    """Wraps a handler's ``handle(data, context)``: each request of the batch unwrapped, the
    handler run once on all their rows, each request answered with its own rows' results."""

    name: ClassVar[str]
    # alone in its batch, a request gets every result (kserve, kservev2), or only as many as
    # it had rows (json), as TorchServe's envelopes do; batched, the counts must match
    whole_when_alone: ClassVar[bool] = True

    def __init__(self, entry: Entry) -> None:
        self.entry = entry

    def __call__(self, data: Any, context: Context) -> Any:
        if not data:
            return self.entry(data, context)
        parsed: list[Parsed | BadInputError] = []
        for idx, row in enumerate(data):
            try:
                parsed.append(self.parse(row, idx, context))
            except BadInputError as exc:
                parsed.append(exc)
        good = [p for p in parsed if isinstance(p, Parsed)]
        if not good:
            return parsed
        rows = [row for p in good for row in p.rows]
        self.begin(good, context)
        try:
            results = self.entry(rows, context)
        finally:
            self.end(context)
        if not isinstance(results, list) or not results:
            return results  # a stream, or no answer: the batch runner says what is wrong
        slices = iter(self._split(results, good))
        out: list[Any] = []
        for idx, item in enumerate(parsed):
            if isinstance(item, BadInputError):
                out.append(item)
                continue
            mine = next(slices)
            failed = [r for r in mine if isinstance(r, BaseException)]
            if failed:  # the handler failed one of its rows: the request fails with it
                out.append(failed[0])
                continue
            try:
                out.append(self.answer(mine, item, idx, context))
            except (ValueError, TypeError) as exc:
                out.append(exc)
        return out

    def _split(self, results: list[Any], good: list[Parsed]) -> list[list[Any]]:
        """Each request's results, in order."""
        if len(good) == 1:
            return [results if self.whole_when_alone else results[:len(good[0].rows)]]
        counts = [len(p.rows) for p in good]
        if len(results) != sum(counts):
            # the batch runner then runs each request alone, as TorchServe would
            raise ValueError(f"handler returned {len(results)} results for the {sum(counts)} "
                             f"rows of {len(good)} enveloped requests")
        starts = [sum(counts[:i]) for i in range(len(counts))]
        return [results[start:start + count] for start, count in zip(starts, counts)]

    def parse(self, row: Any, idx: int, context: Context) -> Parsed:
        raise NotImplementedError

    def answer(self, results: list[Any], parsed: Parsed, idx: int, context: Context) -> Any:
        raise NotImplementedError

    def begin(self, parsed: list[Parsed], context: Context) -> None:
        """Set what the handler may read on the context for this batch."""

    def end(self, context: Context) -> None:
        """Take it off again."""


class BodyEnvelope(Envelope):
    name = "body"

    def __call__(self, data: Any, context: Context) -> Any:
        if not data:
            return self.entry(data, context)
        return self.entry([_payload(row) for row in data], context)


class JsonEnvelope(Envelope):
    name = "json"
    whole_when_alone = False

    def parse(self, row: Any, idx: int, context: Context) -> Parsed:
        rows = _instances(_payload(row, whole=True))
        for i, instance in enumerate(rows):
            if not isinstance(instance, dict):
                continue
            if list(instance) == ["b64"]:
                rows[i] = _b64(instance["b64"])
                continue
            rows[i] = {col: _b64(value["b64"])
                       if isinstance(value, dict) and list(value) == ["b64"] else value
                       for col, value in instance.items()}
        return Parsed(rows)

    def answer(self, results: list[Any], parsed: Parsed, idx: int, context: Context) -> Any:
        return {"predictions": results}


def _b64(value: Any) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise BadInputError(f"a {{'b64': ...}} value is not base64: {str(value)[:60]!r}") \
            from None


class KServeEnvelope(Envelope):
    name = "kserve"

    def parse(self, row: Any, idx: int, context: Context) -> Parsed:
        return Parsed(_instances(_payload(row)))

    def answer(self, results: list[Any], parsed: Parsed, idx: int, context: Context) -> Any:
        explain = context.get_request_header(idx, "explain") == "True"
        return {"explanations" if explain else "predictions": results}


class KServeV2Envelope(Envelope):
    name = "kservev2"

    def parse(self, row: Any, idx: int, context: Context) -> Parsed:
        body = _payload(row)
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            raise BadInputError('the body must be a JSON object {"inputs": [{"name", "shape", '
                                '"datatype", "data"}, ...]} with at least one input')
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise BadInputError(f"'id' must be a string, not {type(request_id).__name__}")
        rows = [_v2_input(tensor, i) for i, tensor in enumerate(inputs)]
        return Parsed(rows, request_id if request_id and request_id.strip() else None,
                      [row["name"] for row in rows])

    def begin(self, parsed: list[Parsed], context: Context) -> None:
        # what TorchServe's envelope leaves on the context while the handler runs
        context.input_names = [name for p in parsed for name in p.names]  # type: ignore[attr-defined]
        if parsed[0].request_id is not None:
            context.input_request_id = parsed[0].request_id  # type: ignore[attr-defined]

    def end(self, context: Context) -> None:
        for attr in ("input_names", "input_request_id"):
            if hasattr(context, attr):
                delattr(context, attr)

    def answer(self, results: list[Any], parsed: Parsed, idx: int, context: Context) -> Any:
        if len(results) > len(parsed.names):
            raise ValueError(f"handler returned {len(results)} results for a request of "
                             f"{len(parsed.names)} inputs: each result becomes the output "
                             "named after its input")
        model = context.manifest.get("model") or {}
        return {"id": parsed.request_id or context.get_request_id(idx),
                "model_name": model.get("modelName"),
                "model_version": model.get("modelVersion"),
                "outputs": [_v2_output(result, name)
                            for result, name in zip(results, parsed.names)]}


def _v2_input(tensor: Any, i: int) -> dict[str, Any]:
    """One input tensor as the handler's row: BYTES data is its first element, other data
    is reshaped to ``shape`` as nested lists."""
    if not isinstance(tensor, dict) or not all(k in tensor for k in ("name", "datatype",
                                                                     "shape", "data")):
        raise BadInputError(f"input {i} must have name, shape, datatype and data")
    name, datatype, shape, data = (tensor[k] for k in ("name", "datatype", "shape", "data"))
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise BadInputError(f"input {i}: name and datatype must be strings")
    row = dict(tensor)
    if datatype == "BYTES":
        if not isinstance(data, (list, np.ndarray)) or len(data) == 0:
            raise BadInputError(f"input {name!r}: BYTES data must be a non-empty list")
        row["data"] = _text(data[0])
        return row
    try:
        row["data"] = np.asarray(data).reshape(tuple(shape)).tolist()
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"input {name!r}: data does not fit shape {shape}: {exc}") from None
    return row


def _text(value: Any) -> Any:
    """A BYTES element as JSON carried it: a string. (OIP v2 requests that came through the
    native transport hold bytes; UTF-8 ones become strings again, binary ones stay bytes.)"""
    if isinstance(value, np.ndarray):
        return [_text(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(value)
    return value


def _v2_output(result: Any, name: str) -> dict[str, Any]:
    """A result as a flat output tensor, its datatype from its numpy dtype (TorchServe's
    rules: strings and objects are BYTES)."""
    if hasattr(result, "detach"):  # a torch tensor, without importing torch here
        result = result.detach().cpu().numpy()
    flat = np.asarray(result).reshape(-1)
    try:
        if flat.dtype.kind == "S":  # raw bytes have no JSON form
            raise TensorError(str(flat.dtype))
        datatype = datatype_of(flat.dtype)
    except TensorError:
        raise ValueError(f"output {name!r}: numpy dtype {flat.dtype} has no KServe v2 datatype"
                         ) from None
    return {"name": name, "datatype": datatype, "data": flat.tolist(), "shape": [flat.size]}


ENVELOPES: dict[str, type[Envelope]] = {
    cls.name: cls for cls in (BodyEnvelope, JsonEnvelope, KServeEnvelope, KServeV2Envelope)}


def wrap(entry: Entry, name: str | None) -> Entry:
    """``entry`` inside the envelope ``name`` (one of NAMES); None: ``entry`` itself."""
    if not name:
        return entry
    if name not in ENVELOPES:
        raise ValueError(f"unknown service_envelope {name!r}: one of {', '.join(NAMES)}")
    return ENVELOPES[name](entry)
