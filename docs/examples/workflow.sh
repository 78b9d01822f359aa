# Archive a workflow with TorchServe's torch-workflow-archiver (`pip install
# torch-workflow-archiver`; the dev install has it), register it, run it, remove it.
INFERENCE=${MS_INFERENCE:-http://127.0.0.1:8080}
MANAGEMENT=${MS_MANAGEMENT:-http://127.0.0.1:8081}
KEY=$(.venv/bin/modelserve key inference)
MKEY=$(.venv/bin/modelserve key management)

.venv/bin/torch-workflow-archiver --workflow-name digits_wf -f \
    --spec-file docs/examples/workflow.yaml --handler docs/examples/workflow_handler.py \
    --export-path model_store          # workflow_store: the model store unless set
curl -s -w '\n' -X POST "$MANAGEMENT/workflows?url=digits_wf.war" \
    -H "Authorization: Bearer $MKEY"
# {"status":"Workflow digits_wf has been registered and scaled successfully."}
curl -s -w '\n' $INFERENCE/wfpredict/digits_wf -H "Authorization: Bearer $KEY" \
  -H 'Content-Type: application/json' \
  -d '[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]'
# {"label":"zero","models_agree":true}
curl -s -w '\n' $MANAGEMENT/workflows/digits_wf -H "Authorization: Bearer $MKEY"
# [{"workflowName":"digits_wf","workflowUrl":"digits_wf.war","minWorkers":1,"maxWorkers":1,
#   "batchSize":1,"maxBatchDelay":50,"workflowDag":"{pre=[digits, onnx], digits=[agg], onnx=[agg]}"}]
curl -s -w '\n' $MANAGEMENT/models -H "Authorization: Bearer $MKEY"
# {"models":[{"modelName":"digits",...},{"modelName":"digits_wf__agg",...},...]}
curl -s -w '\n' -X DELETE $MANAGEMENT/workflows/digits_wf -H "Authorization: Bearer $MKEY"
# {"status":"Workflow \"digits_wf\" unregistered"}
