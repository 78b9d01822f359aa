"""The handler's metrics cache (context.metrics): TorchServe's metrics.yaml declarations."""

from __future__ import annotations

import pytest


def test_metrics_config_declares_the_model_metrics_up_front(tmp_path):
    """MetricCacheYamlImpl: the model_metrics of TorchServe's metrics.yaml are in the cache
    before the handler starts, so get_metric finds them (examples/custom_metrics)."""
    from modelserve.worker.metrics import MetricsCache, MetricTypes

    config = tmp_path / "metrics.yaml"
    config.write_text(
        "dimensions:\n  - &model_name ModelName\n  - &level Level\n"
        "ts_metrics:\n  counter:\n    - name: Requests2XX\n      unit: Count\n"
        "model_metrics:\n  counter:\n    - name: InferenceRequestCount\n      unit: count\n"
        "      dimensions: []\n  gauge:\n    - name: RequestBatchSize\n      unit: count\n"
        "      dimensions: [*model_name]\n    - name: HandlerTime\n      unit: ms\n"
        "      dimensions: [*model_name, *level]\n")
    cache = MetricsCache("m", str(config))
    size = cache.get_metric("RequestBatchSize", MetricTypes.GAUGE)
    assert (size.unit, size.dimension_names) == ("count", ["ModelName"])
    size.add_or_update(4, ["m"])
    cache.get_metric("InferenceRequestCount", MetricTypes.COUNTER).add_or_update(1)
    assert [e[:2] for e in cache.drain()] == [("gauge", "RequestBatchSize"),
                                                ("counter", "InferenceRequestCount")]
    with pytest.raises(KeyError):
        cache.get_metric("Requests2XX")  # the frontend's metrics are not the handler's
