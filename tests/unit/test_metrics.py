"""The frontend's Prometheus registry: what handlers add to it cannot break a scrape."""

from __future__ import annotations

from prometheus_client import generate_latest

from modelserve.server.observability.metrics import ServerMetrics


def test_a_handler_metric_name_gets_one_type_and_never_a_servers_name():
    """Prometheus refuses a scrape with two ``# TYPE`` lines for one name: a handler metric
    declared as counter and gauge, or named like a server metric, kept only its first use."""
    metrics = ServerMetrics()
    metrics.custom.record([("counter", "dup", "c", {}, 1.0), ("gauge", "dup", "c", {}, 2.0),
                           ("counter", "Requests2XX", "c", {}, 5.0),
                           ("gauge", "fine", "ms", {}, 3.0)])
    types = [line.split()[2] for line in generate_latest(metrics.registry).decode().splitlines()
             if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    assert {"dup", "Requests2XX", "fine"} <= set(types)
