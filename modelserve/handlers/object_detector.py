"""Built-in ``object_detector``: TorchServe's ObjectDetector without torchvision.

Images go to the model as a list of ``[3, H, W]`` tensors in [0, 1], unresized and
unnormalised (detection models do their own transform), so images of different sizes share a
batch. The model returns one ``{"boxes", "labels", "scores"}`` dict per image; each request is
answered with ``[{label: [x1, y1, x2, y2], "score": s}, ...]`` for the boxes scoring >= 0.5.
"""

from __future__ import annotations

from typing import Any

import torch

from modelserve import model_clock
from modelserve.handlers.base_handler import BaseHandler
from modelserve.handlers.runtimes import is_onnx
from modelserve.handlers.vision import (
    allow_large_images,
    handle_per_request,
    label_for,
    load_image,
    row_value,
    to_tensor,
)


class ObjectDetector(BaseHandler):
    """Boxes above ``threshold`` with their label names, per image."""
    thread_safe = True  # batch lanes may run copies at once (worker.lanes)

    threshold = 0.5
    image_processing = staticmethod(to_tensor)

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        if is_onnx(self.model):
            raise ValueError(
                "object_detector serves TorchScript detection models "
                "(List[Tensor] in, List[Dict[str, Tensor]] out), not ONNX"
            )
        allow_large_images(context)

    def preprocess(self, data: list[dict[str, Any]]) -> list[torch.Tensor]:
        return [
            load_image(row_value(row), self.image_processing).to(self.device) for row in data
        ]

    def inference(self, data: list[torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(), model_clock.timing():
            out = self.model(data)
        # torchvision detectors under TorchScript return (losses, detections)
        if isinstance(out, tuple):
            out = out[-1]
        return out

    def postprocess(self, data: list[dict[str, torch.Tensor]]) -> list[list[dict[str, Any]]]:
        results = []
        for detections in data:
            keep = detections["scores"] >= self.threshold
            boxes = detections["boxes"][keep].tolist()
            labels = detections["labels"][keep].tolist()
            scores = detections["scores"][keep].tolist()
            results.append([
                {label_for(self.mapping, int(label)): box, "score": score}
                for label, box, score in zip(labels, boxes, scores)
            ])
        return results

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        return handle_per_request(self, data, context)
