# Token authorization, as a client sees it (the server started without --disable-token-auth).
INFERENCE=${MS_INFERENCE:-http://127.0.0.1:8080}
MANAGEMENT=${MS_MANAGEMENT:-http://127.0.0.1:8081}

curl -s -w '\n' $INFERENCE/ping    # open: probes need no key
# {"status":"Healthy"}
curl -s -o /dev/null -w '%{http_code}\n' $INFERENCE/predictions/digits -d '[]'
# 401
curl -s -w '\n' $MANAGEMENT/models \
  -H "Authorization: Bearer $(.venv/bin/modelserve key management)"
# {"models":[...]}
# A new inference key: the old one stops working, the key file holds the new one.
curl -s -w '\n' "$MANAGEMENT/token?type=inference" \
  -H "Authorization: Bearer $(.venv/bin/modelserve key API)"
# {"inference":{"key":"..."}}
