"""A TorchServe handler doing what modelserve's built-in tensor_handler does for the examples
(JSON numbers in, softmax top-k out), so that both servers run the same per-request work in
``compare_torchserve.py``. It imports only ``ts.*``: modelserve serves it unchanged."""

import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class TensorTopK(BaseHandler):
    def initialize(self, context):
        super().initialize(context)
        options = (context.model_yaml_config or {}).get("handler", {})
        self.shape = list(options["input_shape"])
        self.top_k = int(options.get("top_k", 1))

    def preprocess(self, data):
        rows = []
        for row in data:
            body = row.get("data") or row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            rows.append(torch.tensor(body, dtype=torch.float32).reshape(self.shape))
        return torch.stack(rows).to(self.device)

    def postprocess(self, data):
        probs, classes = torch.topk(torch.softmax(data.float(), 1), self.top_k, dim=1)
        out = []
        for row_p, row_c in zip(probs.tolist(), classes.tolist()):
            top = [{"class": c, "probability": p} for p, c in zip(row_p, row_c)]
            out.append(top[0] if self.top_k == 1 else top)
        return out
