"""Load a serialized model by its file type and run a batch through it.

TorchScript (``.pt``/``.pth``/``.torchscript``) loads with ``torch.jit.load``; ONNX (``.onnx``)
with an onnxruntime ``InferenceSession`` on the CUDA provider when the worker has a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

ONNX_SUFFIXES = {".onnx"}
TORCHSCRIPT_SUFFIXES = {".pt", ".pth", ".torchscript", ".ts"}


def load_model(path: Path, device: torch.device) -> Any:
    """The runtime object for ``path``: a ScriptModule or an InferenceSession."""
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return _load_onnx(path, device)
    if suffix in TORCHSCRIPT_SUFFIXES:
        model = torch.jit.load(str(path), map_location=device)
        model.eval()
        return model
    raise ValueError(
        f"cannot tell the runtime of '{path.name}': expected one of "
        f"{sorted(ONNX_SUFFIXES | TORCHSCRIPT_SUFFIXES)}"
    )


def _load_onnx(path: Path, device: torch.device) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def is_onnx(model: Any) -> bool:
    return type(model).__name__ == "InferenceSession"


def input_shape(model: Any) -> list[int | None] | None:
    """Per-sample input shape from an ONNX signature (batch dimension dropped), if static."""
    if not is_onnx(model):
        return None
    dims = model.get_inputs()[0].shape[1:]
    return [d if isinstance(d, int) else None for d in dims]


def run_model(model: Any, batch: torch.Tensor) -> torch.Tensor:
    """One forward pass; the caller holds ``torch.inference_mode``."""
    if is_onnx(model):
        feed = {model.get_inputs()[0].name: np.ascontiguousarray(batch.cpu().numpy())}
        return torch.from_numpy(model.run(None, feed)[0])
    return model(batch)
