# What Prometheus scrapes (the metrics port needs no key).
METRICS=${MS_METRICS:-http://127.0.0.1:8082}

curl -s $METRICS/metrics | grep -E '^(ts_inference_requests_total|modelserve_workers)'
# ts_inference_requests_total{hostname="...",model_name="digits",model_version="default"} 3.0
# modelserve_workers{model_name="digits",model_version="1.0"} 1.0
curl -s $METRICS/metrics | grep '^modelserve_request_latency_seconds_count'
# modelserve_request_latency_seconds_count{model_name="digits",model_version="1.0"} 3.0
