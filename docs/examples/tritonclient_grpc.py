"""Triton's gRPC client against modelserve's OIP v2 gRPC API (`pip install tritonclient[grpc]`)."""

import json
import os
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

# With `make serve` running, from the checkout: the gRPC port and the inference key.
url = os.environ.get("MS_GRPC", "127.0.0.1:8085")
key = json.loads(Path(".modelserve/key_file.json").read_text())["inference"]["key"]
headers = {"authorization": f"Bearer {key}"}  # gRPC call metadata

client = grpcclient.InferenceServerClient(url)
print(client.is_server_live())  # ServerLive and ServerReady need no key
# True
print(client.get_model_metadata("digits_onnx", headers=headers, as_json=True)["inputs"])
# [{'name': 'input', 'datatype': 'FP32', 'shape': ['-1', '1', '8', '8']}]
x = np.random.rand(4, 1, 8, 8).astype(np.float32)
inp = grpcclient.InferInput("input", list(x.shape), "FP32")
inp.set_data_from_numpy(x)  # raw_input_contents
result = client.infer("digits_onnx", [inp], headers=headers)
print(result.as_numpy("output").shape)
# (4, 10)
