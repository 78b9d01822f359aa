"""TorchServe's /metrics: its metrics_config series in its Java client's text format.

TorchServe 0.12 registers every metric its metrics_config names with the Prometheus Java
client (0.9, ``MetricBuilder``: PrometheusCounter, PrometheusGauge, PrometheusHistogram) when
``metrics_mode`` is prometheus, and only the three ``ts_inference_*`` counters when it is
legacy. Its scrape (``TextFormat.write004``) differs from prometheus-client's in what dashboards
and TorchServe's own tests match: a family is listed (HELP, TYPE) as soon as it is registered,
before any sample; counters keep their exact names (no ``_total`` added); every label set ends
with a comma (``Requests2XX{Level="Host",Hostname="web-1",} 3.0``); values are Java doubles.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

# io.prometheus.client.Histogram's default buckets
JAVA_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_INF = 'le="+Inf",'


def java_double(value: float) -> str:
    """``Double.toString``: how TorchServe's frontend prints a metric's value."""
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(v)]
    if v == 0 or 1e-3 <= abs(v) < 1e7:
        return repr(v)
    decimal = Decimal(repr(v))
    sign, digits, _ = decimal.as_tuple()
    exponent = decimal.adjusted()
    fraction = "".join(map(str, digits[1:])).rstrip("0") or "0"
    return f"{'-' if sign else ''}{digits[0]}.{fraction}E{exponent}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = "".join(f'{n}="{_escape(v)}",' for n, v in zip(names, values))
    return f"{{{pairs}{extra}}}" if pairs or extra else ""


@dataclass
class _Family:
    kind: str  # counter, gauge or histogram
    unit: str
    dimensions: tuple[str, ...]
    series: dict[tuple[str, ...], list[float]] = field(default_factory=dict)


class TsExposition:
    """The series TorchServe's frontend would hold; updated by the metrics log's events."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()  # host readings arrive from a thread

    def register(self, name: str, kind: str, unit: str, dimensions: Sequence[str]) -> None:
        """List a family (as TorchServe does at start, or at a handler metric's first sight)."""
        with self._lock:
            self._families.setdefault(name, _Family(kind, unit, tuple(dimensions)))

    def __contains__(self, name: str) -> bool:
        return name in self._families

    def update(self, name: str, values: Sequence[str], value: float) -> None:
        """Counter: add; gauge: set; histogram: observe (IMetric.addOrUpdate)."""
        family = self._families.get(name)
        if family is None:
            return
        key = tuple(values[:len(family.dimensions)])
        with self._lock:
            state = family.series.get(key)
            if family.kind == "histogram":
                if state is None:
                    state = family.series[key] = [0.0] * (len(JAVA_BUCKETS) + 2)
                for i, bound in enumerate(JAVA_BUCKETS):
                    if value <= bound:
                        state[i] += 1
                state[-2] += 1
                state[-1] += value
            elif family.kind == "counter":
                family.series[key] = [(state[0] if state else 0.0) + value]
            else:
                family.series[key] = [float(value)]

    def render(self, names: Iterable[str] = ()) -> bytes:
        """Text format 0.0.4 as the Java client writes it; ``names``: only those families
        (``GET /metrics?name[]=...``), every one when empty."""
        wanted = set(names)
        out: list[str] = []
        with self._lock:
            families = [(n, f, dict(f.series)) for n, f in self._families.items()
                        if not wanted or n in wanted]
        for name, family, series in families:
            out.append(f"# HELP {name} Torchserve prometheus {family.kind} metric with unit: "
                       f"{family.unit}\n# TYPE {name} {family.kind}\n")
            dims = family.dimensions
            for key, state in series.items():
                if family.kind != "histogram":
                    out.append(f"{name}{_labels(dims, key)} {java_double(state[0])}\n")
                    continue
                for bound, count in zip(JAVA_BUCKETS, state):
                    le = f'le="{java_double(bound)}",'
                    out.append(f"{name}_bucket{_labels(dims, key, le)} {java_double(count)}\n")
                out.append(f"{name}_bucket{_labels(dims, key, _INF)} "
                           f"{java_double(state[-2])}\n")
                out.append(f"{name}_count{_labels(dims, key)} {java_double(state[-2])}\n")
                out.append(f"{name}_sum{_labels(dims, key)} {java_double(state[-1])}\n")
        return "".join(out).encode()
