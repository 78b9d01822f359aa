"""TorchServe's metrics as log lines (``metrics_mode: log`` or ``legacy``) or, with
``metrics_exposition: torchserve``, as the series of TorchServe's /metrics.

TorchServe 0.12 writes each update of a frontend metric to its ``TS_METRICS`` logger
(ts_metrics.log) and each handler metric to ``MODEL_METRICS`` (model_metrics.log), one line per
update, in the shape its ``LogMetric`` gives them::

    Requests2XX.Count:1.0|#Level:Host|#hostname:web-1,timestamp:1718000000
    HandlerTime.ms:3.21|#ModelName:digits,Level:Model|#hostname:web-1,requestID:9f..,timestamp:1718000000

A metrics_config YAML (TorchServe's metrics.yaml shape: ``ts_metrics`` and ``model_metrics``,
each ``counter``/``gauge``/``histogram`` lists of ``{name, unit, dimensions}``) selects what is
written, with the unit and dimension names printed; a handler metric it does not name is
dropped unless ``model_metrics_auto_detect``. ``legacy`` leaves TorchServe's three
``ts_inference_*`` counters out of the log. modelserve's own Prometheus registry (/metrics) is
not affected: it always has every metric. With ``metrics_exposition: torchserve`` the same
events feed TorchServe's /metrics instead (ts_exposition.py), as MetricBuilder.build chooses:
every selected metric in prometheus mode, the three ``ts_inference_*`` counters in legacy mode.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelserve.config import Settings
from modelserve.server.observability.gpu import gpu_stats
from modelserve.server.observability.procfs import host_cpu_times, host_memory
from modelserve.server.observability.ts_exposition import TsExposition, java_double

__all__ = ["MetricsLog", "Selection", "Spec", "java_double", "load_selection", "metric_line"]

TS_METRICS = "modelserve.ts_metrics"  # the loggers ts_metrics.log and model_metrics.log read
MODEL_METRICS = "modelserve.model_metrics"
HOSTNAME = socket.gethostname()
LEGACY = ("ts_inference_requests_total", "ts_inference_latency_microseconds",
          "ts_queue_latency_microseconds")  # Prometheus-only in TorchServe's legacy mode
# ts.metrics.unit: how a worker spells a handler metric's unit in its metric lines
UNITS = {"ms": "Milliseconds", "s": "Seconds", "percent": "Percent", "count": "Count",
         "MB": "Megabytes", "GB": "Gigabytes", "kB": "Kilobytes", "B": "Bytes", "": "unit"}
_HOST = ["Level", "Hostname"]
_MODEL = ["ModelName", "Level"]
_COUNTERS = {"Requests2XX", "Requests4XX", "Requests5XX", *LEGACY}  # the rest are gauges
_TS_DEFAULTS = {  # TorchServe 0.12's ts/configs/metrics.yaml, the default selection
    "Requests2XX": ("Count", _HOST), "Requests4XX": ("Count", _HOST),
    "Requests5XX": ("Count", _HOST),
    **{name: ("Count" if name.endswith("total") else "Microseconds",
              ["model_name", "model_version", "hostname"]) for name in LEGACY},
    "QueueTime": ("Milliseconds", _HOST), "WorkerThreadTime": ("Milliseconds", _HOST),
    "WorkerLoadTime": ("Milliseconds", ["WorkerName", *_HOST]),
    "CPUUtilization": ("Percent", _HOST), "MemoryUsed": ("Megabytes", _HOST),
    "MemoryAvailable": ("Megabytes", _HOST), "MemoryUtilization": ("Percent", _HOST),
    "DiskUsage": ("Gigabytes", _HOST), "DiskUtilization": ("Percent", _HOST),
    "DiskAvailable": ("Gigabytes", _HOST),
    **{name: (unit, ["Level", "DeviceId", "Hostname"]) for name, unit in (
        ("GPUMemoryUtilization", "Percent"), ("GPUMemoryUsed", "Megabytes"),
        ("GPUUtilization", "Percent"))},
}
_MODEL_DEFAULTS = {"HandlerTime": ("ms", _MODEL), "PredictionTime": ("ms", _MODEL)}


@dataclass(frozen=True)
class Spec:
    unit: str
    dimensions: tuple[str, ...]  # the last one names the host
    kind: str = "gauge"  # counter, gauge or histogram: what /metrics makes of it


@dataclass(frozen=True)
class Selection:
    """The metrics to write: frontend (ts) and handler (model) ones, by name."""

    ts: Mapping[str, Spec]
    model: Mapping[str, Spec]


def _specs(section: Any, where: str, host_dimension: bool) -> dict[str, Spec]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ValueError(f"{where}: expected counter/gauge/histogram lists")
    specs: dict[str, Spec] = {}
    for kind, entries in section.items():
        if kind not in ("counter", "gauge", "histogram") or not isinstance(entries, list | None):
            raise ValueError(f"{where}.{kind}: expected counter, gauge or histogram: [...]")
        for entry in entries or []:
            if not isinstance(entry, dict) or not entry.get("name") or not entry.get("unit"):
                raise ValueError(f"{where}.{kind}: every metric needs a name and a unit, "
                                 f"got {entry!r}")
            dims = entry.get("dimensions") or []
            if not isinstance(dims, list):
                raise ValueError(f"{where}.{kind}: {entry['name']}: dimensions is not a list")
            names = [str(d) for d in dims] + (["Hostname"] if host_dimension else [])
            specs[str(entry["name"])] = Spec(str(entry["unit"]), tuple(names), kind)
    return specs


def load_selection(path: Path | None) -> Selection:
    """The metrics_config file's selection; TorchServe's default one when ``path`` is None.
    Raises ValueError for a file that is not in metrics.yaml's shape."""
    if path is None:
        return Selection(
            {name: Spec(unit, tuple(dims), "counter" if name in _COUNTERS else "gauge")
             for name, (unit, dims) in _TS_DEFAULTS.items()},
            {name: Spec(unit, (*dims, "Hostname")) for name, (unit, dims)
             in _MODEL_DEFAULTS.items()})
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"metrics_config {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"metrics_config {path}: expected ts_metrics and model_metrics")
    # model metrics get the Hostname dimension (MetricConfiguration.setModel_metrics)
    return Selection(_specs(doc.get("ts_metrics"), f"{path}: ts_metrics", False),
                     _specs(doc.get("model_metrics"), f"{path}: model_metrics", True))


def metric_line(name: str, spec: Spec, values: Sequence[str], value: float,
                request_id: str | None = None, now: float | None = None) -> str:
    """One metric update as TorchServe's LogMetric writes it: the spec's dimension names
    paired in order with ``values``, whose last one is the host's name."""
    count = min(len(spec.dimensions), len(values)) - 1
    dims = ",".join(f"{spec.dimensions[i]}:{values[i]}" for i in range(count))
    line = f"{name}.{spec.unit}:{java_double(value)}|#{dims}|#hostname:{values[-1]}"
    if request_id is not None:
        line += f",requestID:{request_id}"
    return f"{line},timestamp:{int(time.time() if now is None else now)}"


class MetricsLog:
    """Writes the selected metrics to the TS_METRICS and MODEL_METRICS loggers, or to
    TorchServe's /metrics (``exposition``) where its metrics mode puts them there."""

    def __init__(self, selection: Selection, mode: str = "log", auto_detect: bool = False,
                 hostname: str = HOSTNAME, exposition: TsExposition | None = None) -> None:
        legacy = mode == "legacy"
        self.ts = {k: v for k, v in selection.ts.items() if not (legacy and k in LEGACY)}
        self.model = dict(selection.model)
        self.auto_detect = auto_detect
        self.hostname = hostname
        self.ts_log = logging.getLogger(TS_METRICS)
        self.model_log = logging.getLogger(MODEL_METRICS)
        self._cpu = (0, 0)  # CPUUtilization: the busy share since the last reading (or boot)
        self.exposition = exposition
        self._to_exposition = mode == "prometheus" and exposition is not None
        if exposition is not None and mode == "prometheus":
            for spec_map in (self.ts, self.model):  # listed from the start, as TorchServe does
                for name, spec in spec_map.items():
                    exposition.register(name, spec.kind, spec.unit, spec.dimensions)
        elif exposition is not None and mode == "legacy":
            for name in LEGACY:  # MetricBuilder.build: Prometheus counters in legacy mode
                spec = selection.ts.get(name)
                if spec is not None:
                    exposition.register(name, "counter", spec.unit, spec.dimensions)

    @property
    def writes_lines(self) -> bool:
        """Whether metric lines go to the log files (not to /metrics, not turned down)."""
        return not self._to_exposition and (self.ts_log.isEnabledFor(logging.INFO)
                                            or self.model_log.isEnabledFor(logging.INFO))

    def frontend(self, name: str, values: Sequence[str], value: float) -> None:
        exposition = self.exposition
        if exposition is not None and name in exposition:
            exposition.update(name, [*values, self.hostname], value)
            return
        spec = self.ts.get(name)
        if spec is not None and not self._to_exposition and self.ts_log.isEnabledFor(
                logging.INFO):
            self.ts_log.info(metric_line(name, spec, [*values, self.hostname], value))

    # -- the frontend's metrics ----------------------------------------------------------------
    def status(self, status: int) -> None:
        """NettyUtils.sendHttpResponse: one RequestsNXX line per answered request."""
        self.frontend(f"Requests{status // 100}XX", ["Host"], 1)

    def received(self, model: str, version: str) -> None:
        """An inference request reached its model (InferenceRequestHandler counts it there,
        before it runs)."""
        self.frontend("ts_inference_requests_total", [model, version], 1)

    def request(self, model: str, version: str, latency_s: float, queue_s: float) -> None:
        """An answered inference request (RestJob.response)."""
        labels = [model, version]
        self.frontend("ts_inference_latency_microseconds", labels, latency_s * 1e6)
        self.frontend("ts_queue_latency_microseconds", labels, queue_s * 1e6)
        self.frontend("QueueTime", ["Host"], int(queue_s * 1000))

    def worker_loaded(self, worker_name: str, ms: float) -> None:
        self.frontend("WorkerLoadTime", [worker_name, "Host"], int(ms))

    def batch(self, model: str, request_ids: Iterable[str], handler_ms: float,
              round_trip_ms: float, events: Iterable[Sequence[Any]]) -> None:
        """A batch answered: WorkerThreadTime (the frontend's share of the round trip), the
        worker's PredictionTime (the handler call) and the metrics the handler emitted."""
        self.frontend("WorkerThreadTime", ["Host"], max(0, int(round_trip_ms - handler_ms)))
        ids = ",".join(request_ids)
        self.handler_metric("PredictionTime", "ms", {"ModelName": model, "Level": "Model"},
                            round(handler_ms, 2), ids)
        for kind, name, unit, labels, value in events:
            self.handler_metric(name, unit, labels, value, ids, kind)

    def handler_metric(self, name: str, unit: str, labels: Mapping[str, str], value: float,
                       request_id: str, kind: str = "gauge") -> None:
        if not self._to_exposition and not self.model_log.isEnabledFor(logging.INFO):
            return
        spec = self.model.get(name)
        if spec is None:
            if not self.auto_detect:
                return
            # registered at first sight with the worker's unit and dimension names
            spec = self.model.setdefault(name, Spec(UNITS.get(unit, unit),
                                                    (*labels, "Hostname"), kind))
            if self._to_exposition:
                assert self.exposition is not None
                self.exposition.register(name, spec.kind, spec.unit, spec.dimensions)
        if self._to_exposition:
            assert self.exposition is not None
            self.exposition.update(name, [*labels.values(), self.hostname], value)
            return
        self.model_log.info(metric_line(name, spec, [*labels.values(), self.hostname], value,
                                        request_id))

    # -- the host's metrics (ts/metrics/system_metrics.py) ------------------------------------
    def system(self) -> None:
        """CPU, disk, GPU and memory readings, in TorchServe's order."""
        cpu, self._cpu = self._cpu, host_cpu_times()
        busy, total = self._cpu[0] - cpu[0], self._cpu[1] - cpu[1]
        self.frontend("CPUUtilization", ["Host"], round(100.0 * busy / total, 1) if total else 0)
        disk = shutil.disk_usage("/")
        self.frontend("DiskAvailable", ["Host"], disk.free / 2**30)
        self.frontend("DiskUsage", ["Host"], disk.used / 2**30)
        used_share = disk.used / (disk.used + disk.free) if disk.used + disk.free else 0
        self.frontend("DiskUtilization", ["Host"], round(100.0 * used_share, 1))
        stats = gpu_stats()
        for device, _util, used_mb, total_mb in stats:
            share = 100.0 * used_mb / total_mb if total_mb else 0.0
            self.frontend("GPUMemoryUtilization", ["Host", device], round(share, 1))
            self.frontend("GPUMemoryUsed", ["Host", device], used_mb)
        for device, util, _used, _total in stats:
            self.frontend("GPUUtilization", ["Host", device], util)
        total_b, available_b, used_b = host_memory()
        self.frontend("MemoryAvailable", ["Host"], available_b / 2**20)
        self.frontend("MemoryUsed", ["Host"], used_b / 2**20)
        share = (total_b - available_b) / total_b if total_b else 0
        self.frontend("MemoryUtilization", ["Host"], round(100.0 * share, 1))

    async def run_system(self, interval_s: float) -> None:
        """Every ``interval_s`` seconds from now on (MetricManager.scheduleMetrics); off the
        event loop, as nvidia-smi may take a moment."""
        while True:
            try:
                await asyncio.to_thread(self.system)
            except Exception as exc:  # a reading that failed must not end the next ones
                logging.getLogger("modelserve.metrics").warning("system metrics: %r", exc)
            await asyncio.sleep(interval_s)


def from_settings(settings: Settings) -> MetricsLog | None:
    """The metrics log the settings ask for (None: metrics_mode prometheus with modelserve's
    own /metrics). Raises ValueError for a metrics_config that cannot be read."""
    torchserve = settings.metrics_exposition == "torchserve"
    if settings.metrics_mode == "prometheus" and not torchserve:
        return None
    return MetricsLog(load_selection(settings.metrics_config), settings.metrics_mode,
                      settings.model_metrics_auto_detect,
                      exposition=TsExposition() if torchserve else None)
