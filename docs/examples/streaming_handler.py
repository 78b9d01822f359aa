"""A streaming handler: answers with one chunk per word of the request text, as it goes.

Archive and serve it (see README, "Streaming responses"):

    modelserve archive --model-name words --version 1.0 \
        --handler docs/examples/streaming_handler.py --export-path model_store
    modelserve start --models words=words.mar
    curl -N http://127.0.0.1:8080/predictions/words -H 'Content-Type: text/plain' \
        -d 'streams arrive word by word'
    curl -N http://127.0.0.1:8080/predictions/words -H 'Content-Type: text/plain' \
        -H 'Accept: text/event-stream' -d 'hi there'

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
            texts.append(body.decode() if isinstance(body, (bytes, bytearray)) else str(body))
        return [self.words(text, context, idx) for idx, text in enumerate(texts)]
