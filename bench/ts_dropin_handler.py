"""A custom handler written the way TorchServe's docs teach, for ``bench/ts_dropin.py``.

A ``BaseHandler`` subclass: ``preprocess`` reads each request's JSON list (``json.loads`` when
the body arrives as bytes; TorchServe and modelserve both hand a parsed list to the handler
for ``Content-Type: application/json``), ``inference`` calls the TorchScript model that
``BaseHandler.initialize`` loaded, ``postprocess`` returns ``tolist()``. It declares nothing
modelserve-specific (no ``thread_safe``): it is the user's code, served unchanged by both.
"""

import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class JsonListHandler(BaseHandler):
    def preprocess(self, data):
        rows = []
        for row in data:
            body = row.get("data") or row.get("body")
            if isinstance(body, (bytes, bytearray, str)):
                body = json.loads(body)
            rows.append(torch.tensor(body, dtype=torch.float32))
        return torch.stack(rows).to(self.device)

    def inference(self, data, *args, **kwargs):
        with torch.no_grad():
            return self.model(data)

    def postprocess(self, data):
        return data.tolist()
