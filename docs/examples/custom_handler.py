"""A handler written to TorchServe's contract (docs/handlers.md): `handle(data, context)` gets
one entry per request of the batch and returns one answer per request, in the same order.

It needs no model file: it answers statistics of a JSON list of numbers, computed with torch,
scaled by the `handler: {scale: ...}` option of the archive's model-config.yaml.
"""

import torch

from modelserve.handlers.errors import PredictionException  # or ts.utils.util's


class NumberStats:
    def initialize(self, context):
        options = (context.model_yaml_config or {}).get("handler") or {}
        self.scale = float(options.get("scale", 1.0))

    def handle(self, data, context):
        answers = []
        for row in data:
            body = row.get("data", row.get("body"))  # JSON is already parsed
            if not isinstance(body, list) or not body:
                # Fails only this request (400); the batch's other requests get their answers.
                answers.append(PredictionException("expected a JSON list of numbers", 400))
                continue
            x = torch.tensor(body, dtype=torch.float64) * self.scale
            answers.append({"n": len(body), "mean": x.mean().item(), "max": x.max().item(),
                            "batch": len(data)})
        return answers
