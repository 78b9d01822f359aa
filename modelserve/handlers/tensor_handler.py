"""Built-in tensor/JSON handler: one sample per request, batched, validated per request.

A request body may be a JSON list of numbers (flat or nested; or ``{"data": [...]}`` /
``{"inputs": ...}`` / ``{"instances": ...}``), an image (PNG/JPEG, when ``image_mode`` is
set), a ``.npy`` array, or raw little-endian tensor bytes. It is checked against the model's
per-sample input shape; a request that does not fit gets its own 400 while the rest of the
batch is served.

Options, under ``handler:`` in the archive's model-config.yaml::

    input_shape: [1, 8, 8]   # per sample; from the ONNX or torch.export signature if omitted
    input_dtype: float32
    image_mode: L            # Pillow mode for image bodies (L or RGB); images refused if unset
    image_scale: 0.0627      # pixel (0-255) multiplier
    softmax: true            # apply softmax to the output
    top_k: 1                 # 0: raw output rows; 1: {"class", "label", "probability"};
                             # k > 1: a list of k such dicts, best first

Labels come from ``index_to_name.json`` when the archive has one.

OIP v2 requests (``handle_v2``) skip all of that: their named tensors are concatenated along
dimension 0 across the batch, fed to the model as they are, and the model's raw outputs are
split back per request. ``v2_signature`` describes the model: the ONNX graph's own inputs and
outputs, or for torch models an input ``input`` of ``[-1, *input_shape]`` / ``input_dtype``
and outputs found by one forward pass on zeros at load time.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from tokenize import TokenError
from typing import Any

import numpy as np
import orjson
import torch
from PIL import Image

from modelserve import jsonc
from modelserve.datatypes import datatype_of
from modelserve.handlers.base_handler import BaseHandler
from modelserve.handlers.errors import BadInputError
from modelserve.handlers.runtimes import input_shape as model_input_shape
from modelserve.handlers.runtimes import is_onnx, onnx_signature, platform_of, run_named
from modelserve.handlers.vision import label_for, open_image

_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF")
_NPY_MAGIC = b"\x93NUMPY"
_CONTAINER_KEYS = ("data", "inputs", "instances", "input")


def _as_array(value: Any, dtype: np.dtype, shape: list[int] | None, image: dict) -> np.ndarray:
    """Turn one request's decoded body into an array of the per-sample shape."""
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, (bytes, bytearray)):
        value = _from_bytes(bytes(value), dtype, shape, image)
    if isinstance(value, dict):
        key = next((k for k in _CONTAINER_KEYS if k in value), None)
        if key is None:
            raise BadInputError(
                f"JSON object must hold the tensor under one of {list(_CONTAINER_KEYS)}"
            )
        value = value[key]
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value, dtype=dtype)
        except (ValueError, TypeError) as exc:
            raise BadInputError(
                f"input must be a (nested) list of numbers: {exc}"
            ) from None
    if shape is not None:
        expected = math.prod(shape)
        if value.size != expected:
            raise BadInputError(
                f"expected {expected} values (per-sample shape {shape}), got {value.size}"
                f" (shape {list(value.shape)})"
            )
        value = value.reshape(shape)
    try:
        return value.astype(dtype, copy=False)
    except (ValueError, TypeError) as exc:  # e.g. a .npy of strings
        raise BadInputError(f"input of dtype {value.dtype} is not {dtype} numbers: {exc}") \
            from None


def _from_bytes(
    body: bytes, dtype: np.dtype, shape: list[int] | None, image: dict
) -> Any:
    if body.startswith(_NPY_MAGIC):
        try:
            return np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, SyntaxError, TokenError, EOFError) as exc:  # a broken header
            raise BadInputError(f"invalid .npy body: {exc}") from None
    if body.startswith(_IMAGE_MAGIC):
        return _decode_image(body, shape, image)
    if body[:64].lstrip()[:1] in (b"[", b"{"):
        try:
            return jsonc.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadInputError(f"request body is not valid JSON: {exc}") from None
    if shape is not None and len(body) == math.prod(shape) * dtype.itemsize:
        return np.frombuffer(body, dtype=dtype)
    expected = f"{math.prod(shape) * dtype.itemsize} raw bytes, " if shape else ""
    raise BadInputError(
        f"unrecognised body of {len(body)} bytes: send JSON numbers, "
        f"{expected}a .npy array, or an image"
    )


def _decode_image(body: bytes, shape: list[int] | None, image: dict) -> np.ndarray:
    mode = image.get("mode")
    if not mode:
        raise BadInputError("this model does not take images; send JSON numbers")
    img = open_image(body)
    try:
        img = img.convert(mode)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot convert the image to {mode}: {exc}") from None
    if shape is not None and len(shape) >= 2:
        height, width = shape[-2], shape[-1]
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32) * float(image.get("scale", 1 / 255))
    if pixels.ndim == 2:
        return pixels[None, :, :]
    return pixels.transpose(2, 0, 1)  # HWC -> CHW


class TensorHandler(BaseHandler):
    thread_safe = True  # batch lanes may run copies at once (worker.lanes)

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        options = (context.model_yaml_config or {}).get("handler", {}) or {}
        shape = options.get("input_shape") or model_input_shape(self.model)
        if shape is not None and any(d is None for d in shape):
            shape = None
        self.input_shape: list[int] | None = list(shape) if shape else None
        self.dtype = np.dtype(options.get("input_dtype", "float32"))
        self.image = {
            "mode": options.get("image_mode"),
            "scale": options.get("image_scale", 1 / 255),
        }
        self.softmax = bool(options.get("softmax", False))
        self.top_k = int(options.get("top_k", 0))

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        self.context = context
        return self._route_by_headers(data, self._run_each)

    def _run_each(self, data: list[dict[str, Any]]) -> list[Any]:
        results: list[Any] = [None] * len(data)
        arrays: list[np.ndarray] = []
        good: list[int] = []
        for idx, row in enumerate(data):
            value = row.get("data", row.get("body"))
            try:
                arrays.append(_as_array(value, self.dtype, self.input_shape, self.image))
                good.append(idx)
            except BadInputError as exc:
                results[idx] = exc
        if good:
            if self.input_shape is None and len({a.shape for a in arrays}) > 1:
                for idx, array in zip(good, arrays):
                    results[idx] = self._run([array])[0]
            else:
                for idx, out in zip(good, self._run(arrays)):
                    results[idx] = out
        return results

    def _explain_input(self, data: list[dict[str, Any]]) -> None:
        """None: requests are decoded one by one, each against the input shape."""
        return None

    # -- OIP v2 ---------------------------------------------------------------------------
    def v2_signature(self) -> dict[str, Any] | None:
        if is_onnx(self.model):
            self._v2 = onnx_signature(self.model)
            return self._v2
        self._v2 = {"platform": platform_of(self.model), "inputs": [], "outputs": []}
        if self.input_shape is None:
            return self._v2  # unknown: requests are checked against themselves only
        self._v2["inputs"] = [{"name": "input", "datatype": datatype_of(self.dtype),
                               "shape": [-1, *self.input_shape]}]
        zeros = np.zeros([1, *self.input_shape], dtype=self.dtype)
        with torch.inference_mode():
            outs = run_named(self.model, {"input": zeros}, ["input"], [], self.device)
        self._v2["outputs"] = [{"name": name, "datatype": datatype_of(array.dtype),
                                "shape": [-1, *array.shape[1:]]}
                               for name, array in outs.items()]
        return self._v2

    def handle_v2(self, requests: list[dict[str, Any]], context: Any) -> list[Any]:
        """Requests whose inputs agree in everything but dimension 0 run as one batch."""
        sig = getattr(self, "_v2", None) or self.v2_signature() or {}
        order = [t["name"] for t in sig.get("inputs", [])]
        names = [t["name"] for t in sig.get("outputs", [])]
        groups: defaultdict[tuple[Any, ...], list[int]] = defaultdict(list)
        for idx, req in enumerate(requests):
            inputs = req["inputs"]
            key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items())
            groups[key].append(idx)
        results: list[Any] = [None] * len(requests)
        for members in groups.values():
            try:
                for idx, out in zip(members, self._run_v2(
                        [requests[i]["inputs"] for i in members], order, names)):
                    results[idx] = out
            except Exception as exc:  # e.g. the model rejects the shape: each request alone
                if len(members) == 1:
                    results[members[0]] = _model_error(exc)
                    continue
                for idx in members:
                    try:
                        results[idx] = self._run_v2([requests[idx]["inputs"]], order, names)[0]
                    except Exception as exc_one:
                        results[idx] = _model_error(exc_one)
        return results

    def _run_v2(self, inputs: list[dict[str, np.ndarray]], order: list[str],
                names: list[str]) -> list[dict[str, np.ndarray]]:
        order = order or list(inputs[0])
        if any(a.ndim == 0 for a in inputs[0].values()):
            raise BadInputError("inputs need a batch dimension (dimension 0)")
        sizes = [req[order[0]].shape[0] for req in inputs]
        feeds = {n: np.concatenate([req[n] for req in inputs]) if len(inputs) > 1
                 else inputs[0][n] for n in order}
        with torch.inference_mode():
            outs = run_named(self.model, feeds, order, names, self.device)
        total = sum(sizes)
        if len(inputs) > 1 and any(a.ndim == 0 or a.shape[0] != total for a in outs.values()):
            raise ValueError("model outputs do not keep the batch dimension")
        cuts = np.cumsum(sizes)[:-1]
        parts = {name: np.split(array, cuts) if len(inputs) > 1 else [array]
                 for name, array in outs.items()}
        return [{name: parts[name][i] for name in outs} for i in range(len(inputs))]

    def _run(self, arrays: list[np.ndarray]) -> list[Any]:
        batch = torch.from_numpy(np.stack(arrays))
        return self.postprocess(self.inference(batch))

    def postprocess(self, data: torch.Tensor) -> list[Any]:
        data = data.float()
        if self.softmax:
            data = torch.softmax(data, dim=1)
        if self.top_k <= 0:
            return data.tolist()
        k = min(self.top_k, data.shape[1])
        probs, classes = torch.topk(data, k, dim=1)
        rows = []
        for row_p, row_c in zip(probs.tolist(), classes.tolist()):
            top = [
                {"class": c, "label": label_for(self.mapping, c), "probability": p}
                for p, c in zip(row_p, row_c)
            ]
            rows.append(top[0] if self.top_k == 1 else top)
        return rows


def _model_error(exc: Exception) -> Exception:
    """The model refusing a tensor is the request's fault (400), as the message says."""
    if isinstance(exc, BadInputError):
        return exc
    return BadInputError(f"the model could not run on the inputs: {type(exc).__name__}: {exc}")
