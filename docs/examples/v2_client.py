"""Triton's HTTP client against modelserve's OIP v2 REST API (`pip install tritonclient[http]`)."""

import json
import os
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

# With `make serve` running, from the checkout: the inference port and the key it wants.
url = os.environ.get("MS_INFERENCE", "http://127.0.0.1:8080").removeprefix("http://")
key = json.loads(Path(".modelserve/key_file.json").read_text())["inference"]["key"]
headers = {"Authorization": f"Bearer {key}"}

client = httpclient.InferenceServerClient(url)
print(client.get_model_metadata("digits_onnx", headers=headers))
# {'name': 'digits_onnx', ..., 'inputs': [{'name': 'input', 'datatype': 'FP32',
#   'shape': [-1, 1, 8, 8]}], ...}
x = np.random.rand(4, 1, 8, 8).astype(np.float32)
inp = httpclient.InferInput("input", list(x.shape), "FP32")
inp.set_data_from_numpy(x)  # sent as binary tensor data by default
result = client.infer("digits_onnx", [inp], headers=headers)
print(result.as_numpy("output").shape)
# (4, 10)
