"""A streaming handler: answers with one chunk per word of the request text, as it goes.

docs/examples/streaming.sh archives, registers and calls it (docs/streaming.md);
docs/examples/v2_grpc_stream.py streams its words over OIP v2 gRPC (docs/v2.md).

``handle`` returns a list with one entry per request of the batch; an entry that is a
generator is streamed, each item one chunk (a dict goes out as one JSON line, a str or bytes
as is). Requests of a batch each get their own generator, so their own chunks. The
``finally`` runs when the client disconnects too: the worker closes a cancelled generator.
"""

import time


class WordStreamer:
    def initialize(self, context):
        options = (context.model_yaml_config or {}).get("handler") or {}
        self.delay = float(options.get("delay", 0.2))  # seconds between words

    def words(self, text, context, idx):
        try:
            for i, word in enumerate(text.split()):
                if i:
                    time.sleep(self.delay)
                yield {"index": i, "word": word, "request_id": context.get_request_id(idx)}
        finally:
            pass  # free per-request resources here: runs on completion and on cancel

    def handle(self, data, context):
        texts = []
        for row in data:
            body = row.get("data", row.get("body"))
            if isinstance(body, dict) and "inputs" in body:  # OIP v2 (gRPC ModelStreamInfer)
                body = body["inputs"][0]["data"].ravel()[0]  # the first input: one BYTES item
            texts.append(body.decode() if isinstance(body, (bytes, bytearray)) else str(body))
        return [self.words(text, context, idx) for idx, text in enumerate(texts)]
