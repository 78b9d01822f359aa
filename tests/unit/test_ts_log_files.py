"""TorchServe's log files and metric lines, piece by piece (tests/integration/test_ts_log_files.py
checks them on a running server)."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from modelserve.config import Settings
from modelserve.personality import torchserve_defaults
from modelserve.server.observability import logfiles, metrics_log
from modelserve.server.observability.logfiles import Log4jFormatter, open_log_files
from modelserve.server.observability.metrics_log import (
    MetricsLog,
    Spec,
    java_double,
    load_selection,
    metric_line,
)
from modelserve.server.transport.http.access_log import torchserve_line
from modelserve.ts_config import read_ts_config

# Metric.java's PATTERN: how TorchServe's frontend reads a metric line back
TS_METRIC = re.compile(r"\s*([\w\s]+)\.([\w\s]+):([0-9\-,.eE]+)\|#([^|]*)(\|#type:([^|,]+))?"
                       r"\|#hostname:([^,]+),([^,]+)(,(.*))?")


def test_values_print_as_javas_double_to_string():
    """LogMetric appends a double: Double.toString, scientific outside [1e-3, 1e7)."""
    assert [java_double(v) for v in (1, 0, 12.5, 0.001, 9999999.0, 1e7, 12345678.9, 1e-4,
                                     -3.5e-5)] == [
        "1.0", "0.0", "12.5", "0.001", "9999999.0", "1.0E7", "1.23456789E7", "1.0E-4", "-3.5E-5"]


def test_a_metric_line_is_logmetrics():
    """LogMetric.buildMetricString: dimension names from the spec paired in order with the
    values, the last value the host; a model metric adds requestID before the timestamp."""
    spec = Spec("Count", ("Level", "Hostname"))
    assert metric_line("Requests2XX", spec, ["Host", "web-1"], 1, now=1718000000.7) == \
        "Requests2XX.Count:1.0|#Level:Host|#hostname:web-1,timestamp:1718000000"
    spec = Spec("ms", ("ModelName", "Level", "Hostname"))
    line = metric_line("HandlerTime", spec, ["digits", "Model", "web-1"], 3.21, "r1,r2", 5)
    assert line == "HandlerTime.ms:3.21|#ModelName:digits,Level:Model|#hostname:web-1," \
                   "requestID:r1,r2,timestamp:5"
    assert TS_METRIC.fullmatch(line)


def test_default_selection_is_torchserves_metrics_yaml():
    """ts/configs/metrics.yaml (v0.12.0): its ts_metrics and model_metrics, units, dimensions."""
    selection = load_selection(None)
    assert set(selection.ts) == {
        "Requests2XX", "Requests4XX", "Requests5XX", "ts_inference_requests_total",
        "ts_inference_latency_microseconds", "ts_queue_latency_microseconds", "QueueTime",
        "WorkerThreadTime", "WorkerLoadTime", "CPUUtilization", "MemoryUsed",
        "MemoryAvailable", "MemoryUtilization", "DiskUsage", "DiskUtilization", "DiskAvailable",
        "GPUMemoryUtilization", "GPUMemoryUsed", "GPUUtilization"}
    assert selection.ts["WorkerLoadTime"] == Spec("Milliseconds",
                                                  ("WorkerName", "Level", "Hostname"))
    assert selection.ts["ts_queue_latency_microseconds"] == Spec(
        "Microseconds", ("model_name", "model_version", "hostname"), "counter")
    assert selection.model == {name: Spec("ms", ("ModelName", "Level", "Hostname"))
                               for name in ("HandlerTime", "PredictionTime")}


def test_metrics_config_file_selects(tmp_path):
    """TorchServe's metrics.yaml shape, YAML anchors and all; model metrics get Hostname
    (MetricConfiguration.setModel_metrics)."""
    path = tmp_path / "metrics.yaml"
    path.write_text("dimensions:\n  - &level Level\n  - &host Hostname\n"
                    "ts_metrics:\n  counter:\n    - name: Requests2XX\n      unit: Count\n"
                    "      dimensions: [*level, *host]\n"
                    "model_metrics:\n  gauge:\n    - name: SizeOfImage\n      unit: kB\n"
                    "      dimensions: [ModelName, *level]\n  histogram:\n")
    selection = load_selection(path)
    assert selection.ts == {"Requests2XX": Spec("Count", ("Level", "Hostname"), "counter")}
    assert selection.model == {"SizeOfImage": Spec("kB", ("ModelName", "Level", "Hostname"))}
    path.write_text("ts_metrics:\n  counter:\n    - name: Requests2XX\n")
    with pytest.raises(ValueError, match="needs a name and a unit"):
        load_selection(path)
    with pytest.raises(ValueError, match="nope.yaml"):
        load_selection(tmp_path / "nope.yaml")


def _capture(caplog: pytest.LogCaptureFixture) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {metrics_log.TS_METRICS: [], metrics_log.MODEL_METRICS: []}
    for record in caplog.records:
        out.setdefault(record.name, []).append(record.getMessage())
    return out


def test_metrics_log_writes_what_is_selected(caplog):
    """test_metrics.py's log-mode cases: frontend metrics in TS_METRICS, handler metrics in
    MODEL_METRICS; a handler metric the selection lacks is dropped unless auto-detected
    (WorkerLifeCycle.ReaderThread); legacy keeps the ts_inference_* counters out."""
    caplog.set_level(logging.INFO)
    log = MetricsLog(load_selection(None), hostname="web-1")
    log.status(404)
    log.received("digits", "default")  # as the request reaches its model
    log.request("digits", "default", 0.0125, 0.002)
    log.worker_loaded("W-9000-digits_1.0", 812.4)
    events = [("gauge", "HandlerTime", "ms", {"ModelName": "digits", "Level": "Model"}, 2.5),
              ("counter", "Extra", "count", {"ModelName": "digits"}, 1.0)]
    log.batch("digits", ["r1", "r2"], 3.0, 4.5, events)
    lines = _capture(caplog)
    ts = [line.rsplit(",timestamp:", 1)[0] for line in lines[metrics_log.TS_METRICS]]
    assert ts == [
        "Requests4XX.Count:1.0|#Level:Host|#hostname:web-1",
        "ts_inference_requests_total.Count:1.0|#model_name:digits,model_version:default"
        "|#hostname:web-1",
        "ts_inference_latency_microseconds.Microseconds:12500.0|#model_name:digits,"
        "model_version:default|#hostname:web-1",
        "ts_queue_latency_microseconds.Microseconds:2000.0|#model_name:digits,"
        "model_version:default|#hostname:web-1",
        "QueueTime.Milliseconds:2.0|#Level:Host|#hostname:web-1",
        "WorkerLoadTime.Milliseconds:812.0|#WorkerName:W-9000-digits_1.0,Level:Host"
        "|#hostname:web-1",
        "WorkerThreadTime.Milliseconds:1.0|#Level:Host|#hostname:web-1"]
    model = [line.rsplit(",timestamp:", 1)[0] for line in lines[metrics_log.MODEL_METRICS]]
    assert model == [
        "PredictionTime.ms:3.0|#ModelName:digits,Level:Model|#hostname:web-1,requestID:r1,r2",
        "HandlerTime.ms:2.5|#ModelName:digits,Level:Model|#hostname:web-1,requestID:r1,r2"]
    assert all(TS_METRIC.fullmatch(line) for line in lines[metrics_log.TS_METRICS])

    caplog.clear()
    legacy = MetricsLog(load_selection(None), "legacy", auto_detect=True, hostname="h")
    legacy.request("digits", "default", 0.01, 0.0)
    legacy.batch("digits", ["r1"], 1.0, 1.0, events)
    lines = _capture(caplog)
    assert [line.split(".")[0] for line in lines[metrics_log.TS_METRICS]] == \
        ["QueueTime", "WorkerThreadTime"]
    # auto-detected: the worker's unit as its metric lines spell it, its dimension names
    assert lines[metrics_log.MODEL_METRICS][-1].startswith(
        "Extra.Count:1.0|#ModelName:digits|#hostname:h,requestID:r1,timestamp:")


def test_host_metrics_in_system_metrics_order(caplog, monkeypatch):
    """ts/metrics/system_metrics.py's readings (alphabetical by function, as collect_all runs
    them); GPUs with TorchServe's DeviceId dimension."""
    monkeypatch.setattr(metrics_log, "gpu_stats", lambda: [("0", 55.0, 1024.0, 4096.0)])
    caplog.set_level(logging.INFO)
    MetricsLog(load_selection(None), hostname="h").system()
    names = [m.split(":")[0] for m in _capture(caplog)[metrics_log.TS_METRICS]]
    assert names == [
        "CPUUtilization.Percent", "DiskAvailable.Gigabytes", "DiskUsage.Gigabytes",
        "DiskUtilization.Percent", "GPUMemoryUtilization.Percent", "GPUMemoryUsed.Megabytes",
        "GPUUtilization.Percent", "MemoryAvailable.Megabytes", "MemoryUsed.Megabytes",
        "MemoryUtilization.Percent"]
    gpu = _capture(caplog)[metrics_log.TS_METRICS][4]
    assert gpu.startswith("GPUMemoryUtilization.Percent:25.0|#Level:Host,DeviceId:0|#hostname:h,")


def test_log4j_patterns():
    """log4j2.xml: "%d{ISO8601} [%-5p] %t %c - %m%n", and "%d{ISO8601} - %m%n"; a worker's
    output is MODEL_LOG on the worker's reader thread (WorkerLifeCycle.ReaderThread)."""
    record = logging.LogRecord("modelserve.pool", logging.WARNING, __file__, 1, "restart %s",
                               ("w",), None)
    record.created, record.msecs = time.mktime((2024, 6, 10, 14, 3, 11, 0, 0, -1)), 532.0
    assert Log4jFormatter().format(record) == \
        f"2024-06-10T14:03:11,532 [WARN ] {record.threadName} modelserve.pool - restart w"
    assert Log4jFormatter(message_only=True).format(record) == "2024-06-10T14:03:11,532 - restart w"
    record.worker, record.worker_line = "W-9000-echo_1.0", "loaded"
    record.levelname = "INFO"
    assert Log4jFormatter().format(record).endswith(
        " [INFO ] W-9000-echo_1.0-stdout MODEL_LOG - loaded")


def test_files_at_start(tmp_path):
    """TorchServe creates all five files at start (test_metrics.py: logs_created,
    validate_metrics_created); an unwritable directory is reported and skipped
    (test_log_location_var_snapshot_disabled_custom_path_read_only)."""
    assert open_log_files(Settings()).paths == []  # modelserve's default: no files
    files = open_log_files(Settings(log_dir=tmp_path / "logs", metrics_log_dir=tmp_path / "m"))
    try:
        assert sorted(p.relative_to(tmp_path).as_posix() for p in files.paths) == [
            "logs/access_log.log", "logs/model_log.log", "logs/ts_log.log",
            "m/model_metrics.log", "m/ts_metrics.log"]
        assert all(p.is_file() for p in files.paths)
    finally:
        files.close()
    (tmp_path / "blocked").write_text("a file where the directory should be")
    files = open_log_files(Settings(log_dir=tmp_path / "blocked", metrics_log_dir=tmp_path))
    try:
        assert [p.name for p in files.paths] == ["ts_metrics.log", "model_metrics.log"]
    finally:
        files.close()


def test_torchserve_personality_defaults(tmp_path):
    """ConfigManager: LOG_LOCATION and METRICS_LOCATION, each else "logs"; metrics_mode log."""
    defaults = torchserve_defaults({}, env={"LOG_LOCATION": "/var/log/ts"})
    assert (defaults["log_dir"], defaults["metrics_log_dir"]) == (Path("/var/log/ts"),
                                                                  Path("logs"))
    assert (defaults["metrics_mode"], defaults["access_log_format"]) == ("log", "torchserve")
    assert Settings().log_dir is None and Settings().metrics_mode == "prometheus"


def test_config_properties_metrics_keys(tmp_path):
    """ConfigManager's metrics keys map onto settings; getMetricsMode drops blanks, ignores
    case, and reads anything else as log."""
    path = tmp_path / "config.properties"
    path.write_text("metrics_mode= Legacy \nmetrics_config=/etc/ts/metrics.yaml\n"
                    "model_metrics_auto_detect=true\ndisable_system_metrics=true\n"
                    "metric_time_interval=15\n")
    config = read_ts_config(path)
    assert config.settings == {
        "metrics_mode": "legacy", "metrics_config": "/etc/ts/metrics.yaml",
        "model_metrics_auto_detect": True, "disable_system_metrics": True,
        "metric_time_interval": 15} and config.warnings == []
    Settings(**config.settings)
    path.write_text("metrics_mode=statsd\n")
    config = read_ts_config(path)
    assert config.settings == {"metrics_mode": "log"}
    assert config.warnings[0].startswith("metrics_mode: 'statsd' is not log")


@pytest.mark.parametrize("client, target, line", [
    (("127.0.0.1", 52314), b"/predictions/digits", '/127.0.0.1:52314 "POST '
     '/predictions/digits HTTP/1.1" 200 4'),
    (("::1", 8), b"/models", '/[::1]:8 "POST /models?url=a.mar HTTP/1.1" 200 4'),
    (None, b"/ping", '127.0.0.1 "POST /ping HTTP/1.1" 200 4'),
])
def test_torchserve_access_line(client, target, line):
    """Session.toString: remote address (InetSocketAddress), request line, status, ms."""
    scope = {"client": client, "method": "POST", "raw_path": target, "http_version": "1.1",
             "query_string": b"url=a.mar" if target == b"/models" else b""}
    assert torchserve_line(scope, 200, 4) == line


def test_files_roll_over_by_size(tmp_path, monkeypatch):
    """log4j2.xml: SizeBasedTriggeringPolicy, DefaultRolloverStrategy max=5 (at 100 MB)."""
    monkeypatch.setattr(logfiles, "MAX_BYTES", 200)
    files = open_log_files(Settings(log_dir=tmp_path))
    try:
        access = logging.getLogger(logfiles.ACCESS)
        for i in range(40):
            access.info('/127.0.0.1:1 "GET /ping HTTP/1.1" 200 %d', i)
    finally:
        files.close()
    rolled = sorted(p.name for p in tmp_path.glob("access_log.log*"))
    assert rolled == ["access_log.log", *(f"access_log.log.{i}" for i in range(1, 6))]
    assert all(p.stat().st_size <= 200 + 80 for p in tmp_path.glob("access_log.log*"))
    assert (tmp_path / "access_log.log").read_text().endswith(" 200 39\n")


def test_metrics_keys_from_ts_environment_variables(tmp_path, monkeypatch):
    """test_metrics.py sets them so: enable_envvars_config=true in the file, and
    TS_METRICS_MODE, TS_METRICS_CONFIG, TS_MODEL_METRICS_AUTO_DETECT, TS_DISABLE_SYSTEM_METRICS
    in the environment (ConfigManager.setSystemVars)."""
    for name, value in (("TS_METRICS_MODE", "prometheus"), ("TS_METRICS_CONFIG", "m.yaml"),
                        ("TS_MODEL_METRICS_AUTO_DETECT", "true"),
                        ("TS_DISABLE_SYSTEM_METRICS", "true")):
        monkeypatch.setenv(name, value)
    path = tmp_path / "config.properties"
    path.write_text("enable_envvars_config=true\n")
    settings = read_ts_config(path).settings
    assert settings == {"metrics_mode": "prometheus", "metrics_config": "m.yaml",
                        "model_metrics_auto_detect": True, "disable_system_metrics": True}


def test_torchserve_exposition_follows_the_metrics_mode(caplog):
    """MetricBuilder.build and TextFormat.write004 (test_metrics.py's prometheus and legacy
    cases): in prometheus mode every selected metric is listed from the start and updated
    there, not logged; labels end with a comma; counters add, gauges keep the last value;
    an auto-detected handler metric appears at first sight; legacy mode lists only the
    ts_inference_* counters and logs the rest."""
    from modelserve.server.observability.ts_exposition import TsExposition

    caplog.set_level(logging.INFO)
    exposition = TsExposition()
    log = MetricsLog(load_selection(None), "prometheus", auto_detect=True, hostname="h",
                     exposition=exposition)
    assert "# TYPE GPUUtilization gauge" in exposition.render().decode()  # no sample yet
    for status in (200, 200, 404):
        log.status(status)
    for queued in (0.25, 0.125):
        log.received("m", "default")
        log.request("m", "default", 0.5, queued)
    log.batch("m", ["r1"], 2.0, 3.0, [["counter", "Calls", "count", {"ModelName": "m"}, 1],
                                      ["histogram", "Size", "kB", {"ModelName": "m"}, 0.02]])
    text = exposition.render().decode()
    assert "# HELP Requests2XX Torchserve prometheus counter metric with unit: Count\n" \
           "# TYPE Requests2XX counter\nRequests2XX{Level=\"Host\",Hostname=\"h\",} 2.0\n" in text
    assert 'ts_inference_requests_total{model_name="m",model_version="default",hostname="h",}' \
           ' 2.0' in text
    assert 'QueueTime{Level="Host",Hostname="h",} 125.0' in text  # the last value
    assert 'PredictionTime{ModelName="m",Level="Model",Hostname="h",} 2.0' in text
    assert 'Calls{ModelName="m",Hostname="h",} 1.0' in text
    assert 'Size_bucket{ModelName="m",Hostname="h",le="0.025",} 1.0' in text
    assert 'Size_bucket{ModelName="m",Hostname="h",le="0.01",} 0.0' in text
    assert exposition.render(["QueueTime"]).decode().count("# TYPE") == 1
    assert not [r for r in caplog.records if r.name in (metrics_log.TS_METRICS,
                                                          metrics_log.MODEL_METRICS)]

    legacy_exposition = TsExposition()
    legacy = MetricsLog(load_selection(None), "legacy", hostname="h",
                        exposition=legacy_exposition)
    legacy.status(200)
    legacy.request("m", "default", 0.5, 0.25)
    text = legacy_exposition.render().decode()
    assert "ts_inference_latency_microseconds{" in text and "Requests2XX" not in text
    assert any(r.getMessage().startswith("Requests2XX.Count:1.0|#Level:Host")
               for r in caplog.records if r.name == metrics_log.TS_METRICS)


def test_metric_lines_are_written_only_in_log_mode_and_at_info(caplog):
    """What decides whether a batch's metric lines must precede its answers."""
    from modelserve.server.observability.ts_exposition import TsExposition

    logging.getLogger(metrics_log.TS_METRICS).setLevel(logging.INFO)
    logging.getLogger(metrics_log.MODEL_METRICS).setLevel(logging.INFO)
    assert MetricsLog(load_selection(None)).writes_lines
    assert not MetricsLog(load_selection(None), "prometheus", exposition=TsExposition()) \
        .writes_lines
    try:
        for name in (metrics_log.TS_METRICS, metrics_log.MODEL_METRICS):
            logging.getLogger(name).setLevel(logging.WARNING)  # a log4j2.xml at WARN
        assert not MetricsLog(load_selection(None)).writes_lines
    finally:
        for name in (metrics_log.TS_METRICS, metrics_log.MODEL_METRICS):
            logging.getLogger(name).setLevel(logging.NOTSET)
