"""Built-in ``image_classifier``: TorchServe's ImageClassifier without torchvision.

Each request is one image (bytes or base64), resized, center-cropped to 224 and normalised
with ImageNet statistics; the answer is ``{label: probability}`` for the top-5 softmax classes.
"""

from __future__ import annotations

import torch

from modelserve.handlers.vision import (
    VisionHandler,
    label_for,
)


class ImageClassifier(VisionHandler):
    """Top-k classification; subclasses may replace ``image_processing`` or ``topk``."""
    thread_safe = True  # batch lanes may run copies at once (worker.lanes)

    topk = 5

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    def postprocess(self, data: torch.Tensor) -> list[dict[str, float]]:
        probs = torch.softmax(data.float(), dim=1)
        # TorchServe's topk fails on models with fewer than topk classes; answer them all.
        top_probs, top_classes = torch.topk(probs, min(self.topk, probs.shape[1]), dim=1)
        return [
            {label_for(self.mapping, c): p for c, p in zip(classes, row)}
            for classes, row in zip(top_classes.tolist(), top_probs.tolist())
        ]
