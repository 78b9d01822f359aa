"""OIP v2 requests inside the worker: raw tensors in, named output tensors out.

A handler that defines ``handle_v2(requests, context)`` (the built-in tensor handler does) gets
each request as ``{"id", "parameters", "inputs": {name: ndarray}, "outputs": [names] | None}``
and returns, per request, ``{name: array}`` (numpy or torch) or an exception; it batches as it
likes (the tensor handler concatenates along dimension 0). ``v2_signature()`` on the handler,
if defined, describes the model for ``GET /v2/models/{m}``.

Any other (TorchServe-style) handler gets the request as a JSON-like body, the way
TorchServe's KServe v2 envelope passed it: ``{"body": {"id", "parameters", "inputs": [{"name",
"datatype", "shape", "data": ndarray}], "outputs": [{"name"}]}}``. Its result per request may be
``{"outputs": [{"name", "data", "datatype"?, "shape"?}]}``, an array or list (one output named
``output``), or anything else JSON-encodable (one BYTES output ``output`` holding the JSON).
Such a handler may also stream its answers the ways it can on /predictions
(``modelserve.worker.streaming``): its chunks go out as TorchServe chunks (bytes, text, JSON),
which only gRPC ModelStreamInfer carries (one BYTES tensor per chunk); its answers that are
not streamed stay tensors, sent in the batch's result frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from modelserve.datatypes import TensorError, from_numpy, numpy_dtype, to_numpy
from modelserve.handlers.errors import BadInputError
from modelserve.worker.codec import JSON, error_response
from modelserve.worker.context import Context
from modelserve.worker.streaming import Streamer, is_stream


def _array(value: Any, datatype: str | None = None) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    if datatype is not None:
        return np.asarray(value, dtype=numpy_dtype(datatype))
    array = np.asarray(value)
    return array.astype(object) if array.dtype.kind in "SU" else array


def _decode(v2: dict[str, Any]) -> dict[str, Any]:
    try:
        inputs = {name: to_numpy(datatype, shape, raw)
                  for name, datatype, shape, raw in v2["inputs"]}
    except TensorError as exc:
        raise BadInputError(str(exc)) from None
    return {"id": v2.get("id"), "parameters": v2.get("parameters") or {},
            "inputs": inputs, "outputs": v2.get("outputs")}


def _as_body(req: dict[str, Any], datatypes: list[str]) -> dict[str, Any]:
    """The TorchServe-handler view of one v2 request."""
    inputs = [{"name": name, "datatype": dt, "shape": list(array.shape), "data": array}
              for (name, array), dt in zip(req["inputs"].items(), datatypes)]
    outputs = [{"name": n} for n in req["outputs"]] if req["outputs"] is not None else None
    body = {"id": req["id"], "parameters": req["parameters"], "inputs": inputs}
    if outputs is not None:
        body["outputs"] = outputs
    return {"body": body}


def _from_handler_result(result: Any) -> dict[str, np.ndarray]:
    if isinstance(result, dict) and isinstance(result.get("outputs"), list):
        out = {}
        for item in result["outputs"]:
            array = _array(item["data"], item.get("datatype"))
            if "shape" in item:
                array = array.reshape(item["shape"])
            out[str(item["name"])] = array
        return out
    if isinstance(result, (list, tuple)) or hasattr(result, "shape"):
        try:
            array = _array(result)
            if array.dtype.kind != "O" or all(isinstance(x, (bytes, str)) for x in array.flat):
                return {"output": array}
        except ValueError:
            pass
    text = orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)
    return {"output": np.array([text], dtype=object)}


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _encode(outputs: dict[str, Any], wanted: list[str] | None) -> list[Any]:
    if wanted is not None:
        missing = [n for n in wanted if n not in outputs]
        if missing:
            raise BadInputError(f"unknown output(s) {missing}; the model returned "
                                f"{sorted(outputs)}")
        outputs = {n: outputs[n] for n in wanted}
    tensors = []
    for name, value in outputs.items():
        datatype, shape, raw = from_numpy(_array(value))
        tensors.append([name, datatype, shape, raw])
    return [200, JSON, b"", {}, tensors]


class V2Runner:
    """Runs the v2 requests of one batch through the handler."""

    def __init__(self, entry: Callable[..., Any], streamer: Streamer | None = None,
                 ts_entry: Callable[..., Any] | None = None) -> None:
        self.entry = entry if ts_entry is None else ts_entry  # a TorchServe-style handler's
        self.streamer = streamer
        owner = getattr(entry, "__self__", None)
        self.native = getattr(owner, "handle_v2", None)
        self._signature = getattr(owner, "v2_signature", None)

    def signature(self) -> dict[str, Any] | None:
        return self._signature() if self._signature is not None else None

    def run(self, wires: list[dict[str, Any]], ctx: Context) -> list[list[Any]]:
        out: list[list[Any] | None] = [None] * len(wires)
        reqs: list[dict[str, Any]] = []
        good: list[int] = []
        for idx, wire in enumerate(wires):
            try:
                reqs.append(_decode(wire))
                good.append(idx)
            except BadInputError as exc:
                out[idx] = error_response(exc)
        if not reqs:
            return [o for o in out if o is not None]
        if len(good) < len(wires):  # the handler's batch: the requests that decoded
            ctx.begin_batch([ctx.request_ids.get(i, "") for i in good],
                            [ctx.get_all_request_header(i) for i in good])
        if self.native is not None:
            results = self.native(reqs, ctx)
            _check(results, len(reqs))
            answers = [self._answer(req, result) for req, result in zip(reqs, results)]
        else:
            datatypes = [[t[1] for t in wires[i]["inputs"]] for i in good]
            rows = [_as_body(r, dts) for r, dts in zip(reqs, datatypes)]
            if self.streamer is None:
                answers = self._run_ts(rows, reqs, ctx)
            else:
                with self.streamer.subset(good):
                    answers = self._run_ts(rows, reqs, ctx)
        for idx, answer in zip(good, answers):
            out[idx] = answer
        return [o for o in out if o is not None]

    def _run_ts(self, rows: list[dict[str, Any]], reqs: list[dict[str, Any]],
                ctx: Context) -> list[list[Any]]:
        """A TorchServe-style handler. It may stream its answers the ways it can to
        /predictions (modelserve.worker.streaming): then each chunk goes out encoded as a
        TorchServe answer would be (bytes, UTF-8 text, JSON), for the transport to carry
        (gRPC ModelStreamInfer: one BYTES tensor per chunk); its other answers are tensors."""
        streamer = self.streamer
        results = self.entry(rows, ctx)
        if streamer is not None and is_stream(results):
            return streamer.run_steps(results, len(rows), ctx)
        _check(results, len(reqs))
        if streamer is not None:
            if streamer.active:  # it sent intermediate responses: these are the last chunks
                return streamer.finish(results, ctx)
            if any(is_stream(r) for r in results):
                return streamer.run_list(results, ctx,
                                         lambda idx, r: self._answer(reqs[idx], r))
        return [self._answer(req, result) for req, result in zip(reqs, results)]

    def _answer(self, req: dict[str, Any], result: Any) -> list[Any]:
        try:
            if isinstance(result, BaseException):
                raise result
            outputs = result if self.native is not None else _from_handler_result(result)
            return _encode(outputs, req["outputs"])
        except Exception as exc:
            return error_response(exc)


def _check(results: Any, n: int) -> None:
    if not isinstance(results, list) or len(results) != n:
        raise ValueError(f"handler returned {type(results).__name__} of "
                         f"{len(results) if isinstance(results, list) else '?'} results "
                         f"for {n} requests")
