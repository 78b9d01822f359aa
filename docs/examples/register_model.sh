# Register digits.mar (from the model store) a second time, as digits_copy; scale it; remove it.
MANAGEMENT=${MS_MANAGEMENT:-http://127.0.0.1:8081}
INFERENCE=${MS_INFERENCE:-http://127.0.0.1:8080}
AUTH="Authorization: Bearer $(.venv/bin/modelserve key management)"

curl -s -w '\n' -X POST -H "$AUTH" \
  "$MANAGEMENT/models?url=digits.mar&model_name=digits_copy&initial_workers=1"
# {"status":"Model \"digits_copy\" Version: 1.0 registered with 1 initial workers"}
curl -s -w '\n' -X PUT "$MANAGEMENT/models/digits_copy?min_worker=2&synchronous=true" -H "$AUTH"
# {"status":"Workers scaled to 2 for model: digits_copy"}
curl -s -w '\n' "$MANAGEMENT/models/digits_copy" -H "$AUTH"
# [{"modelName":"digits_copy","modelVersion":"1.0",...,"workers":[{"id":"9003",...},...]}]
curl -s -w '\n' $INFERENCE/predictions/digits_copy/1.0 \
  -H "Authorization: Bearer $(.venv/bin/modelserve key inference)" \
  -H 'Content-Type: application/json' \
  -d '[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]'
# {"class":0,"label":"zero","probability":0.99999...}
curl -s -w '\n' -X DELETE "$MANAGEMENT/models/digits_copy" -H "$AUTH"
# {"status":"Model \"digits_copy\" unregistered"}
