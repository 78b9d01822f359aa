"""A streamed answer over OIP v2 gRPC (ModelStreamInfer), with Triton's client: the `words`
model of the streaming page (docs/examples/streaming.sh registers it) sends one response per
word. Responses arrive on the client's own thread, through the callback."""

import json
import os
import queue
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

url = os.environ.get("MS_GRPC", "127.0.0.1:8085")
key = json.loads(Path(".modelserve/key_file.json").read_text())["inference"]["key"]

responses = queue.Queue()
client = grpcclient.InferenceServerClient(url)
client.start_stream(callback=lambda result, error: responses.put((result, error)),
                    headers={"authorization": f"Bearer {key}"})
text = grpcclient.InferInput("TEXT", [1], "BYTES")
text.set_data_from_numpy(np.array([b"streams over grpc"], dtype=object))
client.async_stream_infer("words", [text], request_id="r1", enable_empty_final_response=True)
while True:
    result, error = responses.get(timeout=30)
    if error is not None:
        raise error
    response = result.get_response()
    if response.parameters["triton_final_response"].bool_param:
        break  # the empty response that ends this request's stream
    chunk = json.loads(result.as_numpy("OUTPUT")[0])
    print(response.id, chunk["index"], chunk["word"])
# r1 0 streams
# r1 1 over
# r1 2 grpc
client.stop_stream()
