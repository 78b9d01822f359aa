# Archive the example streaming handler into the model store, register it, and stream.
INFERENCE=${MS_INFERENCE:-http://127.0.0.1:8080}
MANAGEMENT=${MS_MANAGEMENT:-http://127.0.0.1:8081}
KEY=$(.venv/bin/modelserve key inference)

.venv/bin/modelserve archive --model-name words --version 1.0 -f \
    --handler docs/examples/streaming_handler.py --export-path model_store
curl -s -w '\n' -X POST "$MANAGEMENT/models?url=words.mar&initial_workers=1" \
    -H "Authorization: Bearer $(.venv/bin/modelserve key management)"
# {"status":"Model \"words\" Version: 1.0 registered with 1 initial workers"}
curl -sN $INFERENCE/predictions/words -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: text/plain' -d 'streams arrive word by word'
# {"index":0,"word":"streams","request_id":"..."}      <- at once
# {"index":1,"word":"arrive","request_id":"..."}       <- 0.2 s later, and so on
curl -sN $INFERENCE/predictions/words -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: text/plain' -H 'Accept: text/event-stream' -d 'hi there'
# data: {"index":0,"word":"hi","request_id":"..."}
#
# data: {"index":1,"word":"there","request_id":"..."}
