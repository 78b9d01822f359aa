"""OIP v2 REST bodies: JSON tensors and the binary tensor data extension, both ways.

With ``Inference-Header-Content-Length: N`` the first N bytes are the JSON header and the
binary tensors follow it in input order, each sized by its ``binary_data_size`` parameter.
Binary inputs are sliced out of the body as memoryviews (no copy); JSON ``data`` is turned
into raw bytes once, with numpy. Outputs go back binary when asked for (per output
``binary_data``, else the request's ``binary_data_output``), otherwise as flat JSON lists.
"""

from __future__ import annotations

from typing import Any

import orjson

from modelserve import jsonc
from modelserve.datatypes import TensorError, numpy_dtype, to_numpy
from modelserve.datatypes import from_json_data as raw_from_json
from modelserve.server.transport.v2.types import InferRequest, RequestedOutput, Tensor

HEADER_LENGTH = "inference-header-content-length"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TensorError(f"{what} must be a JSON object")
    return value


def _parameters(value: Any, what: str) -> dict[str, Any]:
    """OIP parameters: a JSON object of booleans, numbers and strings (the protocol's
    ``$parameter_value``; gRPC's ``InferParameter`` holds nothing else)."""
    if value is None:
        return {}
    params = _object(value, f"{what} 'parameters'")
    for key, item in params.items():
        if not isinstance(item, (bool, int, float, str)):
            raise TensorError(f"{what} parameter '{key}' must be a boolean, number or string, "
                              f"not {type(item).__name__}")
    return params


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request's tensors; TensorError (a 400) for anything malformed."""
    view = memoryview(body)
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise TensorError(f"invalid Inference-Header-Content-Length {header_length!r}") \
                from None
        if not 0 < json_size <= len(body):
            raise TensorError(f"Inference-Header-Content-Length {json_size} is outside the "
                              f"body of {len(body)} bytes")
    else:
        json_size = len(body)
    try:
        doc = jsonc.loads(view[:json_size])
    except orjson.JSONDecodeError as exc:
        raise TensorError(f"request body is not valid JSON: {exc}") from None
    doc = _object(doc, "the request")
    params = _parameters(doc.get("parameters"), "request")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise TensorError("'inputs' must be a non-empty list of tensors")

    offset = json_size
    inputs: list[Tensor] = []
    for item in raw_inputs:
        item = _object(item, "each input")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(
                shape, list):
            raise TensorError("each input needs 'name' (string), 'datatype' (string) and "
                              "'shape' (list of integers)")
        tparams = _parameters(item.get("parameters"), f"input '{name}'")
        size = tparams.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(body):
                raise TensorError(f"input '{name}': binary_data_size {size!r} runs past the "
                                  f"end of the body ({len(body) - offset} bytes left)")
            raw: bytes | memoryview = view[offset:offset + size]
            offset += size
        elif "data" in item:
            try:
                raw = raw_from_json(datatype, shape, item["data"])
            except TensorError as exc:
                raise TensorError(f"input '{name}': {exc}") from None
        else:
            raise TensorError(f"input '{name}' has neither 'data' nor binary_data_size")
        inputs.append(Tensor(name, datatype, shape, raw, tparams))
    if offset != len(body):
        raise TensorError(f"{len(body) - offset} bytes of binary data are not claimed by any "
                          f"input's binary_data_size")

    outputs: list[RequestedOutput] | None = None
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise TensorError("'outputs' must be a list")
        outputs = []
        for item in doc["outputs"]:
            item = _object(item, "each requested output")
            if not isinstance(item.get("name"), str):
                raise TensorError("each requested output needs a 'name'")
            oparams = _parameters(item.get("parameters"), f"output '{item['name']}'")
            binary = oparams.get("binary_data")
            outputs.append(RequestedOutput(item["name"], bool(binary) if binary is not None
                                           else None, oparams))
    request_id = doc.get("id")
    return InferRequest(inputs, outputs, str(request_id) if request_id is not None else None,
                        params)


def _tolist(array: Any) -> Any:
    """numpy arrays for the standard library's encoder (orjson takes them as they are)."""
    return array.tolist()


def _json_data(name: str, datatype: str, shape: list[int], raw: bytes) -> Any:
    array = to_numpy(datatype, shape, raw).ravel()
    if datatype != "BYTES":
        return array
    try:
        return [item.decode() for item in array]
    except UnicodeDecodeError:
        raise TensorError(f"output '{name}' holds bytes that are not UTF-8 text; ask for it "
                          f"with binary_data") from None


def encode_response(model: str, version: str, req: InferRequest,
                    outputs: list[list[Any]]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is all JSON)."""
    binary_default = bool(req.parameters.get("binary_data_output", False))
    wanted: dict[str, bool] | None = None
    if req.outputs is not None:
        wanted = {o.name: binary_default if o.binary is None else o.binary for o in req.outputs}
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, datatype, shape, raw in outputs:
        if wanted is not None and name not in wanted:
            continue
        binary = wanted[name] if wanted is not None else binary_default
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(name, datatype, shape, raw)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if req.id is not None:
        doc["id"] = req.id
    header = jsonc.dumps(doc, default=_tolist, option=_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def v1_instances(doc: Any, datatype: str, name: str) -> Tensor:
    """KServe v1 ``{"instances": [...]}``: one tensor whose first dimension is the list."""
    import numpy as np  # on first use: a frontend serving only binary tensors never loads it

    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise TensorError('the body must be {"instances": [...]}')
    try:
        array = np.asarray(doc["instances"], dtype=numpy_dtype(datatype))
    except (ValueError, TypeError, OverflowError) as exc:
        raise TensorError(f"instances are not a regular (nested) list of numbers: {exc}") \
            from None
    if array.ndim == 0 or array.shape[0] == 0:
        raise TensorError("'instances' must be a non-empty list")
    return Tensor(name, datatype, list(array.shape), array.tobytes())
