"""Built-in ``image_segmenter``: TorchServe's ImageSegmenter without torchvision.

Images are preprocessed like the classifier's (Resize 256, CenterCrop 224, ImageNet
normalisation). The model returns ``[N, K, H, W]`` scores, or torchvision's ``{"out": ...}``;
each request is answered ``[H][W][2]``: per pixel the best class (as a float, like TorchServe)
and its softmax probability, which keeps the response far smaller than all K scores.
"""

from __future__ import annotations

from typing import Any

import torch

from modelserve.handlers.vision import VisionHandler


class ImageSegmenter(VisionHandler):
    """Per-pixel top class and probability for each image."""
    thread_safe = True  # batch lanes may run copies at once (worker.lanes)

    def postprocess(self, data: Any) -> list[Any]:
        scores = data["out"] if isinstance(data, dict) else data
        probs = torch.softmax(scores.float(), dim=1)
        best, classes = probs.max(dim=1)
        return torch.stack([classes.to(best.dtype), best], dim=3).tolist()
