"""BaseHandler: TorchServe's default handler, which custom handlers subclass.

``initialize`` picks the device from ``gpu_id``, loads the serialized model (TorchScript or
ONNX) and ``index_to_name.json``; ``handle`` runs preprocess -> inference -> postprocess.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from modelserve.handlers.errors import PredictionException
from modelserve.handlers.runtimes import load_model, run_model
from modelserve.handlers.util import load_label_mapping

log = logging.getLogger(__name__)


class BaseHandler:
    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, str] | None = None
        self.device = torch.device("cpu")
        self.initialized = False
        self.context: Any = None
        self.manifest: dict[str, Any] = {}
        self.model_dir: Path | None = None

    def initialize(self, context: Any) -> None:
        self.context = context
        self.manifest = context.manifest
        props = context.system_properties
        gpu_id = props.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{gpu_id}")
        self.model_dir = Path(props["model_dir"])
        serialized = self.manifest.get("model", {}).get("serializedFile")
        if not serialized:
            raise ValueError("the archive has no serializedFile to load")
        self.model = load_model(self.model_dir / serialized, self.device)
        mapping_file = self.model_dir / "index_to_name.json"
        if mapping_file.is_file():
            self.mapping = load_label_mapping(mapping_file)
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        rows = [row.get("data", row.get("body")) for row in data]
        return torch.as_tensor(rows, device=self.device)

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.inference_mode():
            return run_model(self.model, data.to(self.device))

    def postprocess(self, data: torch.Tensor) -> list[Any]:
        return data.tolist()

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        start = time.perf_counter()
        self.context = context
        if self._is_describe():
            return [self.describe_handle()]
        data_preprocess = self.preprocess(data)
        if self._is_explain():
            output = self.explain_handle(data_preprocess, data)
        else:
            output = self.postprocess(self.inference(data_preprocess))
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2))
        return output

    # -- TorchServe's describe / explain paths (chosen by request headers) --------------------
    def _is_describe(self) -> bool:
        return bool(self.context) and self.context.get_request_header(0, "describe") == "True"

    def _is_explain(self) -> bool:
        return bool(self.context) and self.context.get_request_header(0, "explain") == "True"

    def describe_handle(self) -> Any:
        """Customized metadata for ``GET /models/{name}?customized=true``; override it."""
        return None

    def explain_handle(self, data_preprocess: Any, raw_data: list[dict[str, Any]]) -> list[Any]:
        """Explanations for ``/explanations/{model}``; handlers that can explain override it."""
        raise PredictionException(
            f"model {self.context.model_name} does not support explanations: its handler "
            f"{type(self).__name__} does not implement explain_handle", 501)
