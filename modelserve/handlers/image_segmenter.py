"""Built-in ``image_segmenter``: TorchServe's ImageSegmenter without torchvision.

Images are preprocessed like the classifier's (Resize 256, CenterCrop 224, ImageNet
normalisation). The model returns ``[N, K, H, W]`` scores, or torchvision's ``{"out": ...}``;
each request is answered ``[H][W][2]``: per pixel the best class (as a float, like TorchServe)
and its softmax probability, which keeps the response far smaller than all K scores.
"""

from __future__ import annotations

from typing import Any

import torch

from modelserve.handlers.base_handler import BaseHandler
from modelserve.handlers.vision import (
    allow_large_images,
    handle_per_request,
    imagenet_transform,
    preprocess_images,
)


class ImageSegmenter(BaseHandler):
    """Per-pixel top class and probability for each image."""

    image_processing = staticmethod(imagenet_transform)

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        allow_large_images(context)

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        return preprocess_images(data, self.image_processing, self.device)

    def postprocess(self, data: Any) -> list[Any]:
        scores = data["out"] if isinstance(data, dict) else data
        probs = torch.softmax(scores.float(), dim=1)
        best, classes = probs.max(dim=1)
        return torch.stack([classes.to(best.dtype), best], dim=3).tolist()

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        return handle_per_request(self, data, context)
