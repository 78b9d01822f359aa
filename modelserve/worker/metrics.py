"""Handler-side custom metrics: TorchServe's ``context.metrics`` API.

Handlers call ``add_counter`` / ``add_time`` / ``add_size`` / ``add_percent`` /
``add_metric`` or ``add_metric_to_cache(...).add_or_update(...)``; each call becomes an event
``(type, name, unit, labels, value)`` that the worker sends to the frontend with the batch's
results, where it appears on ``/metrics`` (counters summed, gauges last value, histograms).
"""

from __future__ import annotations

import enum
from typing import Any

import yaml

Event = tuple[str, str, str, dict[str, str], float]


class MetricTypes(enum.StrEnum):
    """``ts.metrics.metric_type_enum.MetricTypes``."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Dimension:
    """``ts.metrics.dimension.Dimension``: one name/value label."""

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def to_dict(self) -> dict[str, str]:
        return {"Name": self.name, "Value": self.value}


class CachingMetric:
    """A metric declared once (name, unit, label names, type) and updated many times."""

    def __init__(self, cache: MetricsCache, name: str, unit: str, dimension_names: list[str],
                 metric_type: MetricTypes) -> None:
        self.metric_name = name
        self.unit = unit
        self.dimension_names = list(dimension_names)
        self.metric_type = MetricTypes(metric_type)
        self._cache = cache

    def add_or_update(self, value: float, dimension_values: list[str] | None = None,
                      request_id: str = "") -> None:
        values = list(dimension_values or [])
        if len(values) != len(self.dimension_names):
            raise ValueError(
                f"metric {self.metric_name} has dimensions {self.dimension_names}, "
                f"got {len(values)} values"
            )
        labels = dict(zip(self.dimension_names, map(str, values)))
        self._cache.emit(self.metric_type, self.metric_name, self.unit, labels, value)

    def update(self, value: float, request_id: str = "",
               dimensions: list[Dimension] | None = None) -> None:
        dims = dimensions or []
        self.add_or_update(value, [d.value for d in dims], request_id)


class MetricsCache:
    """``context.metrics``: TorchServe's MetricCacheYamlImpl methods."""

    def __init__(self, model_name: str, metrics_config: str | None = None) -> None:
        self.model_name = model_name
        self._declared: dict[tuple[str, str], CachingMetric] = {}
        self._events: list[Event] = []
        if metrics_config:
            self.declare_from(metrics_config)

    def declare_from(self, path: str) -> None:
        """The ``model_metrics`` a TorchServe metrics.yaml (``metrics_config``) declares, in
        the cache before the handler starts, as TorchServe's MetricCacheYamlImpl puts them:
        ``get_metric`` finds them without ``add_metric_to_cache``."""
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        for kind, entries in ((doc.get("model_metrics") or {}).items()):
            if kind not in MetricTypes.__members__.values():
                continue
            for entry in entries or []:
                self.add_metric_to_cache(str(entry["name"]), str(entry.get("unit", "")),
                                         [str(d) for d in entry.get("dimensions") or []],
                                         MetricTypes(kind))

    def emit(self, metric_type: MetricTypes, name: str, unit: str, labels: dict[str, str],
             value: float) -> None:
        # names and values as strings: the frame to the frontend takes no other map keys
        labels = {str(k): str(v) for k, v in labels.items()}
        self._events.append((metric_type.value, str(name), str(unit), labels, float(value)))

    def drain(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # -- TorchServe's API ---------------------------------------------------------------------
    def add_metric_to_cache(self, metric_name: str, unit: str,
                            dimension_names: list[str] | None = None,
                            metric_type: MetricTypes = MetricTypes.COUNTER) -> CachingMetric:
        metric = CachingMetric(self, metric_name, unit, dimension_names or [], metric_type)
        self._declared[(metric.metric_type.value, metric_name)] = metric
        return metric

    def get_metric(self, metric_name: str,
                   metric_type: MetricTypes = MetricTypes.COUNTER) -> CachingMetric:
        try:
            return self._declared[(MetricTypes(metric_type).value, metric_name)]
        except KeyError:
            raise KeyError(f"Metric {metric_name} of type {metric_type} is not in the cache") \
                from None

    def add_metric(self, name: str, value: float, unit: str = "count", idx: Any = None,
                   dimensions: list[Dimension] | None = None,
                   metric_type: MetricTypes = MetricTypes.COUNTER) -> None:
        dims = list(dimensions or [])
        names = {d.name for d in dims}
        if "ModelName" not in names:
            dims.append(Dimension("ModelName", self.model_name))
        if "Level" not in names:
            dims.append(Dimension("Level", "Model"))
        labels = {d.name: str(d.value) for d in dims}
        self.emit(MetricTypes(metric_type), name, unit, labels, value)

    def add_counter(self, name: str, value: float, idx: Any = None,
                    dimensions: list[Dimension] | None = None) -> None:
        self.add_metric(name, value, "count", idx, dimensions, MetricTypes.COUNTER)

    def add_time(self, name: str, value: float, idx: Any = None, unit: str = "ms",
                 dimensions: list[Dimension] | None = None,
                 metric_type: MetricTypes = MetricTypes.GAUGE) -> None:
        self.add_metric(name, value, unit, idx, dimensions, metric_type)

    def add_size(self, name: str, value: float, idx: Any = None, unit: str = "MB",
                 dimensions: list[Dimension] | None = None,
                 metric_type: MetricTypes = MetricTypes.GAUGE) -> None:
        self.add_metric(name, value, unit, idx, dimensions, metric_type)

    def add_percent(self, name: str, value: float, idx: Any = None,
                    dimensions: list[Dimension] | None = None,
                    metric_type: MetricTypes = MetricTypes.GAUGE) -> None:
        self.add_metric(name, value, "percent", idx, dimensions, metric_type)

    def add_error(self, name: str, value: float = 1,
                  dimensions: list[Dimension] | None = None) -> None:
        self.add_metric(name, value, "count", None, dimensions, MetricTypes.COUNTER)
