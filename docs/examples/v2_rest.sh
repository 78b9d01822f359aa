# Open Inference Protocol v2 over REST, with curl: metadata, readiness, one inference.
INFERENCE=${MS_INFERENCE:-http://127.0.0.1:8080}
AUTH="Authorization: Bearer $(.venv/bin/modelserve key inference)"

curl -s -w '\n' $INFERENCE/v2/models/digits_onnx -H "$AUTH"
# {"name":"digits_onnx","versions":["1.0"],"platform":"onnxruntime_onnx",
#  "inputs":[{"name":"input","datatype":"FP32","shape":[-1,1,8,8]}],
#  "outputs":[{"name":"output","datatype":"FP32","shape":[-1,10]}]}
curl -s -o /dev/null -w '%{http_code}\n' $INFERENCE/v2/models/digits_onnx/ready -H "$AUTH"
# 200
curl -s -w '\n' $INFERENCE/v2/models/digits_onnx/infer -H "$AUTH" \
  -H 'Content-Type: application/json' \
  -d '{"id": "zero", "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
       "data": [0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,
                0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]}]}'
# {"model_name":"digits_onnx","model_version":"1.0",
#  "outputs":[{"name":"output","datatype":"FP32","shape":[1,10],"data":[17.0013...,...]}],
#  "id":"zero"}
