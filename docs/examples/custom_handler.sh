# Archive the custom handler with its model-config.yaml, register it, call it.
INFERENCE=${MS_INFERENCE:-http://127.0.0.1:8080}
MANAGEMENT=${MS_MANAGEMENT:-http://127.0.0.1:8081}
KEY=$(.venv/bin/modelserve key inference)

.venv/bin/modelserve archive --model-name stats --version 1.0 -f \
    --handler docs/examples/custom_handler.py -c docs/examples/custom_handler.yaml \
    --export-path model_store
curl -s -w '\n' -X POST "$MANAGEMENT/models?url=stats.mar" \
    -H "Authorization: Bearer $(.venv/bin/modelserve key management)"
# {"status":"Model \"stats\" Version: 1.0 registered with 1 initial workers"}
curl -s -w '\n' $INFERENCE/predictions/stats -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -d '[1, 2, 3, 6]'
# {"n":4,"mean":6.0,"max":12.0,"batch":1}
curl -s -w '\n' $INFERENCE/predictions/stats -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -d '"not a list"'
# {"code":400,"type":"BadRequestException","message":"expected a JSON list of numbers"}
