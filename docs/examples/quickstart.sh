# With `make serve` running, from the checkout (MS_* point the example at another server;
# -w '\n' ends each answer with a newline).
INFERENCE=${MS_INFERENCE:-http://127.0.0.1:8080}
MANAGEMENT=${MS_MANAGEMENT:-http://127.0.0.1:8081}
METRICS=${MS_METRICS:-http://127.0.0.1:8082}

curl -s -w '\n' $INFERENCE/ping
# {"status":"Healthy"}
KEY=$(.venv/bin/modelserve key inference)     # from .modelserve/key_file.json
curl -s -w '\n' $INFERENCE/predictions/digits -H "Authorization: Bearer $KEY" \
  -H 'Content-Type: application/json' \
  -d '[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]'
# {"class":0,"label":"zero","probability":0.99999...}
curl -s -w '\n' $MANAGEMENT/models \
  -H "Authorization: Bearer $(.venv/bin/modelserve key management)"
# {"models":[{"modelName":"digits","modelUrl":"digits.mar"},...]}
curl -s $METRICS/metrics | grep ts_inference_requests_total
# ts_inference_requests_total{hostname="...",model_name="digits",model_version="default"} 1.0
