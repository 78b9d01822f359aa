"""A LitServe server doing what modelserve's built-in tensor_handler does for the examples: JSON
numbers in, the TorchScript model on a batch, softmax, top-k with labels out (same answer
shape: ``{"class", "label", "probability"}``, a list of them for k > 1).

Runs in LitServe's own venv (``compare_litserve.py`` creates it; imports only torch, numpy and
litserve), one server per model:

    python bench/litserve_app.py CONFIG.json

CONFIG.json: ``model`` (a .pt path), ``labels`` (index_to_name.json path or null), ``shape``,
``top_k``, ``port``, ``max_batch_size``, ``batch_timeout`` (s), ``workers``, ``fast_queue``,
``timeout`` (s).
"""

from __future__ import annotations

import json
import sys

import litserve as ls
import torch


class TensorTopK(ls.LitAPI):
    def __init__(self, config: dict, **kwargs: object) -> None:
        super().__init__(max_batch_size=config["max_batch_size"],
                         batch_timeout=config["batch_timeout"], **kwargs)
        self.config = config

    def setup(self, device: str) -> None:
        self.model = torch.jit.load(self.config["model"]).eval()
        self.shape = list(self.config["shape"])
        self.top_k = int(self.config["top_k"])
        labels = self.config.get("labels")
        self.labels = json.load(open(labels)) if labels else {}

    def decode_request(self, request: list[float]) -> torch.Tensor:
        return torch.tensor(request, dtype=torch.float32).reshape(self.shape)

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> list[object]:
        with torch.inference_mode():
            probs = torch.softmax(self.model(x).float(), dim=1)
        k = min(self.top_k, probs.shape[1])
        values, classes = torch.topk(probs, k, dim=1)
        rows = []
        for row_p, row_c in zip(values.tolist(), classes.tolist(), strict=True):
            top = [{"class": c, "label": str(self.labels.get(str(c), c)), "probability": p}
                   for p, c in zip(row_p, row_c, strict=True)]
            rows.append(top[0] if self.top_k == 1 else top)
        return rows

    def unbatch(self, output: list[object]) -> list[object]:
        return output

    def encode_response(self, output: object) -> object:
        return output


def main() -> None:
    with open(sys.argv[1]) as f:
        config = json.load(f)
    server = ls.LitServer(TensorTopK(config), accelerator="cpu", devices=1,
                          workers_per_device=config["workers"], timeout=config["timeout"],
                          fast_queue=config["fast_queue"])
    server.run(host="127.0.0.1", port=config["port"], log_level="warning",
               generate_client_file=False)


if __name__ == "__main__":
    main()
