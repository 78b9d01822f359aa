# KServe v1: {"instances": [...]} in, {"predictions": [...]} out; one instance is one
# 1x8x8 image (the model's input is [-1, 1, 8, 8]).
INFERENCE=${MS_INFERENCE:-http://127.0.0.1:8080}

curl -s -w '\n' $INFERENCE/v1/models/digits:predict \
  -H "Authorization: Bearer $(.venv/bin/modelserve key inference)" \
  -H 'Content-Type: application/json' \
  -d '{"instances": [[[[0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0],
                      [0, 3, 15, 2, 0, 11, 8, 0], [0, 4, 12, 0, 0, 8, 8, 0],
                      [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0],
                      [0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0]]]]}'
# {"predictions":[[17.0013...,-10.6317...,...]]}   (the 10 logits; class 0's is the largest)
