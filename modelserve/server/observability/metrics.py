"""Prometheus metrics: TorchServe's frontend names plus modelserve's histograms.

TorchServe's names are kept exactly (``ts_inference_requests_total``,
``ts_inference_latency_microseconds``, ``ts_queue_latency_microseconds``, ``Requests2XX`` …)
so dashboards built for it keep working. prometheus-client would append ``_total`` to any
counter, so those cumulative sums are exposed by a small collector under their exact names.
"""

from __future__ import annotations

import logging
import re
import socket
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelserve.server.observability.gpu import gpu_stats
from modelserve.server.observability.metrics_log import MetricsLog
from modelserve.server.observability.procfs import cpu_seconds, rss_bytes

HOSTNAME = socket.gethostname()
disable_created_metrics()  # *_created series double the output and no dashboard reads them
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CUSTOM_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class _TorchServeCounters(Collector):
    """Cumulative sums under TorchServe's exact metric names and labels."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.latency_us: dict[tuple[str, str], float] = defaultdict(float)
        self.queue_us: dict[tuple[str, str], float] = defaultdict(float)
        self.status: dict[str, int] = defaultdict(int)

    def collect(self) -> Iterator[Metric]:
        requests = Metric("ts_inference_requests", "Total number of inference requests.", "counter")
        for (model, version), value in self.requests.items():
            labels = {"model_name": model, "model_version": version, "hostname": HOSTNAME}
            requests.add_sample("ts_inference_requests_total", labels, value)
        yield requests
        for name, doc, data in (
            ("ts_inference_latency_microseconds",
             "Cumulative inference duration in microseconds", self.latency_us),
            ("ts_queue_latency_microseconds",
             "Cumulative queue duration in microseconds", self.queue_us),
        ):
            metric = Metric(name, doc, "untyped")
            for (model, version), value in data.items():
                labels = {"model_name": model, "model_version": version, "hostname": HOSTNAME}
                metric.add_sample(name, labels, value)
            yield metric
        for klass in ("2XX", "4XX", "5XX"):
            name = f"Requests{klass}"
            metric = Metric(name, f"Total number of requests with response in {klass} range",
                            "untyped")
            metric.add_sample(name, {"Level": "Host", "Hostname": HOSTNAME}, self.status[klass])
            yield metric


log = logging.getLogger("modelserve.metrics")
_NAME_OK = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")


class _CustomMetrics(Collector):
    """Metrics that handlers emit through ``context.metrics`` (TorchServe's custom metrics):
    counters are summed, gauges keep the last value, histograms bucket every value."""

    def __init__(self) -> None:
        # (type, name) -> (unit, {sorted label items: value state})
        self.families: dict[tuple[str, str], dict[tuple[tuple[str, str], ...], Any]] = {}
        self.units: dict[tuple[str, str], str] = {}
        self.types: dict[str, str] = {}  # one type per name: a scrape with two is refused
        self.reserved: set[str] = set()  # the server's own metric names
        self._refused: set[tuple[str, str]] = set()

    def record(self, events: list[Any]) -> None:
        for metric_type, name, unit, labels, value in events:
            if not _NAME_OK.match(name) or metric_type not in ("counter", "gauge", "histogram"):
                continue
            if name in self.reserved or self.types.setdefault(name, metric_type) != metric_type:
                if (name, metric_type) not in self._refused:
                    self._refused.add((name, metric_type))
                    why = ("is one of the server's metrics" if name in self.reserved
                           else f"is already a {self.types[name]}")
                    log.warning("handler metric %s (%s) dropped: the name %s", name,
                                metric_type, why)
                continue
            key = (metric_type, name)
            series = self.families.setdefault(key, {})
            self.units[key] = unit
            labels = {**labels, "Hostname": HOSTNAME}
            label_key = tuple(sorted(labels.items()))
            if metric_type == "counter":
                series[label_key] = series.get(label_key, 0.0) + value
            elif metric_type == "gauge":
                series[label_key] = value
            else:
                buckets = series.setdefault(label_key, [0] * (len(CUSTOM_BUCKETS) + 1) + [0.0])
                for i, bound in enumerate(CUSTOM_BUCKETS):
                    if value <= bound:
                        buckets[i] += 1
                buckets[-2] += 1  # +Inf and count
                buckets[-1] += value

    def collect(self) -> Iterator[Metric]:
        for (metric_type, name), series in self.families.items():
            doc = f"Custom handler metric ({self.units[(metric_type, name)]})"
            typ = "untyped" if metric_type == "counter" else metric_type
            metric = Metric(name, doc, typ)
            for label_key, state in series.items():
                labels = dict(label_key)
                if metric_type != "histogram":
                    metric.add_sample(name, labels, state)
                    continue
                for bound, count in zip(CUSTOM_BUCKETS, state):
                    metric.add_sample(f"{name}_bucket", {**labels, "le": str(bound)}, count)
                metric.add_sample(f"{name}_bucket", {**labels, "le": "+Inf"}, state[-2])
                metric.add_sample(f"{name}_count", labels, state[-2])
                metric.add_sample(f"{name}_sum", labels, state[-1])
            yield metric


class _ProcessCollector(Collector):
    """Worker-process state, read at scrape time so the request path pays nothing for it:
    live workers, queue depth, requests in flight, restarts, load time, per-worker memory and
    CPU, and host GPUs (TorchServe's GPU metric names)."""

    def __init__(self) -> None:
        self.versions: Callable[[], Iterable[Any]] = list

    def collect(self) -> Iterator[Metric]:
        labels = ("model_name", "model_version")
        fams = {
            "workers": GaugeMetricFamily(
                "modelserve_workers", "Worker processes ready to serve.", labels=labels),
            "queue": GaugeMetricFamily(
                "modelserve_queue_depth", "Requests waiting for a batch.", labels=labels),
            "inflight": GaugeMetricFamily(
                "modelserve_inflight_requests",
                "Requests accepted and not yet answered (queued or in a worker).",
                labels=labels),
            "restarts": CounterMetricFamily(
                "modelserve_worker_restarts", "Workers restarted after dying.", labels=labels),
            "load": GaugeMetricFamily(
                "modelserve_model_load_seconds",
                "Time the most recently started worker took to load the model.", labels=labels),
        }
        scale_events = CounterMetricFamily(
            "modelserve_scale_events", "Worker counts the autoscaler changed, by direction "
            "(up, down) and reason (wait, demand, low_use, idle, budget).",
            labels=(*labels, "direction", "reason"))
        worker_labels = (*labels, "worker_id")
        memory = GaugeMetricFamily("modelserve_worker_memory_bytes",
                                   "Resident memory of each worker process.",
                                   labels=worker_labels)
        cpu = CounterMetricFamily("modelserve_worker_cpu_seconds",
                                  "CPU time used by each worker process.", labels=worker_labels)
        for mv in self.versions():
            key = [mv.name, mv.version]
            workers = mv.pool.workers
            ready = [w for w in workers if w.status == "READY"]
            in_workers = sum(len(jobs) for w in workers for jobs in w.inflight.values())
            fams["workers"].add_metric(key, len(ready))
            queued = mv.batcher.queued
            fams["queue"].add_metric(key, queued)
            fams["inflight"].add_metric(key, queued + in_workers)
            fams["restarts"].add_metric(key, mv.pool.restarts)
            scaling = getattr(mv, "scaling", None)
            for (direction, reason), count in (scaling.events.items() if scaling else ()):
                scale_events.add_metric([*key, direction, reason], count)
            if ready:
                latest = max(ready, key=lambda w: w.start_time)
                fams["load"].add_metric(key, latest.load_ms / 1000.0)
            for w in workers:
                memory.add_metric([*key, str(w.id)], rss_bytes(w.pid))
                cpu.add_metric([*key, str(w.id)], cpu_seconds(w.pid))
        yield from fams.values()
        yield scale_events
        yield memory
        yield cpu
        yield from self._gpus()

    @staticmethod
    def _gpus() -> Iterator[Metric]:
        stats = gpu_stats()
        if not stats:
            return
        names = ("Level", "DeviceId", "Hostname")
        util = GaugeMetricFamily("GPUUtilization", "GPU utilization (%).", labels=names)
        used = GaugeMetricFamily("GPUMemoryUsed", "GPU memory used (MB).", labels=names)
        share = GaugeMetricFamily("GPUMemoryUtilization", "GPU memory used (%).", labels=names)
        for device, utilization, used_mb, total_mb in stats:
            key = ["Host", device, HOSTNAME]
            util.add_metric(key, utilization)
            used.add_metric(key, used_mb)
            share.add_metric(key, 100.0 * used_mb / total_mb if total_mb else 0.0)
        yield util
        yield used
        yield share


class VersionMetrics:
    """One model version's series, bound at registration."""

    def __init__(self, metrics: ServerMetrics, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self.log = metrics.log  # TorchServe's metrics log (metrics_mode: log), or None
        self._ts = metrics.ts
        self._latency = metrics.request_latency.labels(model, version)
        self._queue = metrics.queue_time.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.handler_time = metrics.worker_time.labels(model, version)
        self.executions = 0  # batches run (Triton's execution_count, /v2/models/{m}/stats)

    def observe_request(self, requested: str | None, latency_s: float, queue_s: float) -> None:
        """One answered request. TorchServe labels its counters with the version the client
        asked for, or ``default``; the histograms carry the version that served it."""
        key = (self.model, requested or "default")
        ts = self._ts
        ts.requests[key] += 1
        ts.latency_us[key] += latency_s * 1e6
        ts.queue_us[key] += queue_s * 1e6
        self._latency.observe(latency_s)
        self._queue.observe(queue_s)
        if self.log is not None:
            self.log.request(self.model, requested or "default", latency_s, queue_s)

    def received(self, requested: str | None) -> None:
        """A request reached the model: TorchServe's metric line for it (log mode only; the
        counters count answered requests)."""
        if self.log is not None:
            self.log.received(self.model, requested or "default")

    def worker_loaded(self, worker_id: int, ms: float) -> None:
        """A worker became ready ``ms`` after it was started (the metrics log only)."""
        if self.log is not None:
            self.log.worker_loaded(f"W-{worker_id}-{self.model}_{self.version}", ms)


class ServerMetrics:
    """Every metric the frontend exposes, in one registry of its own."""

    def __init__(self, log: MetricsLog | None = None) -> None:
        self.log = log
        # metrics_exposition torchserve: TorchServe's series come from the metrics log's
        # exposition, so its counters and the handlers' metrics are not listed twice
        self.exposition = log.exposition if log is not None else None
        self.registry = CollectorRegistry(auto_describe=True)
        self.ts = _TorchServeCounters()
        self.custom = _CustomMetrics()
        if self.exposition is None:
            self.registry.register(self.ts)
            self.registry.register(self.custom)
        labels = ["model_name", "model_version"]
        self.request_latency = Histogram(
            "modelserve_request_latency_seconds",
            "Time from a request's arrival to its response, per model version.",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.queue_time = Histogram(
            "modelserve_queue_time_seconds",
            "Time a request waited before its batch was sent to a worker.",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelserve_batch_size", "Requests per batch sent to a worker.",
            labels, buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.worker_time = Histogram(
            "modelserve_handler_seconds", "Time the worker's handler spent on one batch.",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.processes = _ProcessCollector()
        self.registry.register(self.processes)
        self.custom.reserved = {metric.name for metric in self.registry.collect()}

    def observe_status(self, status: int) -> None:
        klass = f"{status // 100}XX"
        if klass in ("2XX", "4XX", "5XX"):
            self.ts.status[klass] += 1
            if self.log is not None:
                self.log.status(status)

    def for_version(self, model: str, version: str) -> VersionMetrics:
        """Series of one model version, bound once so the hot path skips label lookups."""
        return VersionMetrics(self, model, version)

    def forget(self, model: str, version: str) -> None:
        """Drop a model version's series when it is unregistered."""
        for metric in (self.request_latency, self.queue_time, self.batch_size,
                       self.worker_time):
            try:
                metric.remove(model, version)
            except KeyError:
                pass

    def render(self, names: Iterable[str] = ()) -> bytes:
        """The scrape; ``names``: only those metric families (TorchServe's ``name[]``)."""
        wanted = list(names)
        registry = self.registry.restricted_registry(wanted) if wanted else self.registry
        own = generate_latest(registry)
        if self.exposition is None:
            return own
        return self.exposition.render(wanted) + own
