"""TorchServe's log files, on real servers: `modelserve start --ts-config config.properties`
writes access_log.log, model_log.log, ts_log.log, ts_metrics.log and model_metrics.log as
TorchServe 0.12 does (frontend/server/src/main/resources/log4j2.xml; test/pytest/
test_metrics.py), and `modelserve start` alone writes none."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, handler_archive, wait_for

# a handler that prints (model_log.log) and emits a declared and an undeclared metric
HANDLER = textwrap.dedent('''
    import time


    class MetricsHandler:
        def initialize(self, context):
            print("tsm handler initialized", flush=True)

        def handle(self, data, context):
            body = data[0].get("body")
            if isinstance(body, dict) and body.get("sleep"):
                time.sleep(body["sleep"])
            context.metrics.add_time("HandlerTime", 1.5)
            context.metrics.add_counter("SizeOfThing", 3)
            print(f"tsm handled {len(data)}", flush=True)
            return [{"ok": True} for _ in data]
''')
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3}"  # log4j's %d{ISO8601}
FILES = ["access_log.log", "model_log.log", "ts_log.log"]
METRIC_FILES = ["ts_metrics.log", "model_metrics.log"]


@pytest.fixture(scope="module")
def tsm_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("tsm-store")
    handler_archive(tmp_path_factory.mktemp("tsm-src"), store, "tsm", HANDLER, {})
    return store


def start(root: Path, store: Path, props: dict[str, str] | None) -> Server:
    """A server on ``store``'s tsm; with ``props``, under --ts-config (a config.properties
    without addresses: the fixture's config.yaml holds the free ports)."""
    args = []
    if props is not None:
        path = root / "config.properties"
        keys = {"disable_token_authorization": "true", **props}
        path.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        args = ["--ts-config", str(path)]
    return Server(root, store, ["tsm.mar"], extra_config={"worker_start": "spawn"},
                  extra_args=args).start()


def lines_of(path: Path, pattern: str, count: int = 1, timeout: float = 30) -> list[str]:
    """Wait until ``path`` has ``count`` lines matching ``pattern`` (whole line) and return
    the file's lines: they are written after the answer they belong to."""
    regex = re.compile(pattern)

    def found() -> list[str] | None:
        lines = path.read_text().splitlines() if path.exists() else []
        return lines if sum(1 for line in lines if regex.fullmatch(line)) >= count else None

    try:
        return wait_for(found, timeout=timeout)
    except AssertionError:
        text = path.read_text()[-3000:] if path.exists() else "(no file)"
        raise AssertionError(f"{path.name}: no line {pattern!r}:\n{text}") from None


@pytest.fixture
def ts_server(tsm_store: Path, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for name in ("LOG_LOCATION", "METRICS_LOCATION"):
        monkeypatch.delenv(name, raising=False)
    srv = start(tmp_path, tsm_store, {})
    yield srv
    assert not srv.stop()


def test_torchserve_personality_writes_the_five_files(ts_server):
    """test_metrics.py test_logs_created, test_metrics_startup_cfg_created_*,
    test_metrics_log_mode (metrics_mode is log by default: frontend, host and handler metrics
    in the files); the lines as log4j2.xml's patterns and Session / LogMetric write them."""
    logs = ts_server.root / "logs"  # $LOG_LOCATION (conftest's Server sets it), else ./logs
    assert sorted(p.name for p in logs.glob("*.log")) == sorted(FILES + METRIC_FILES)
    r = httpx.post(f"{ts_server.inference}/predictions/tsm", json={"a": 1},
                   headers={"X-Request-ID": "req-7"})
    assert r.status_code == 200
    assert httpx.post(f"{ts_server.inference}/predictions/nope").status_code == 404

    # NettyUtils.sendHttpResponse / Session.toString: remote, request line, status, ms
    lines_of(logs / "access_log.log",
             rf'{TIME} - /127\.0\.0\.1:\d+ "POST /predictions/tsm HTTP/1\.1" 200 \d+')
    lines_of(logs / "access_log.log",
             rf'{TIME} - /127\.0\.0\.1:\d+ "POST /predictions/nope HTTP/1\.1" 404 \d+')
    # WorkerLifeCycle.ReaderThread: each line a worker prints, as MODEL_LOG
    lines_of(logs / "model_log.log",
             rf"{TIME} \[INFO \] W-\d+-tsm_1\.0-stdout MODEL_LOG - tsm handled 1")
    # the root logger: the frontend's own lines, and (additivity) the others'
    ts_log = lines_of(logs / "ts_log.log",
                      rf"{TIME} \[WARN \] \S+ modelserve - token authorization is disabled.*")
    assert any("MODEL_LOG - tsm handler initialized" in line for line in ts_log)

    host, stamp = r"\|#hostname:[^,]+", r",timestamp:\d+"
    ts_metrics = logs / "ts_metrics.log"
    for line in (rf"Requests2XX\.Count:1\.0\|#Level:Host{host}{stamp}",
                 rf"Requests4XX\.Count:1\.0\|#Level:Host{host}{stamp}",
                 rf"ts_inference_requests_total\.Count:1\.0\|#model_name:tsm,"
                 rf"model_version:default{host}{stamp}",
                 rf"ts_inference_latency_microseconds\.Microseconds:[\d.E]+\|#model_name:tsm,"
                 rf"model_version:default{host}{stamp}",
                 rf"QueueTime\.Milliseconds:\d+\.0\|#Level:Host{host}{stamp}",
                 rf"WorkerThreadTime\.Milliseconds:\d+\.0\|#Level:Host{host}{stamp}",
                 rf"WorkerLoadTime\.Milliseconds:\d+\.0\|#WorkerName:W-\d+-tsm_1\.0,"
                 rf"Level:Host{host}{stamp}",
                 rf"CPUUtilization\.Percent:[\d.]+\|#Level:Host{host}{stamp}",
                 rf"MemoryUsed\.Megabytes:[\d.E]+\|#Level:Host{host}{stamp}"):
        lines_of(ts_metrics, rf"{TIME} - {line}")
    model_metrics = logs / "model_metrics.log"
    for name in ("HandlerTime", "PredictionTime"):
        lines_of(model_metrics, rf"{TIME} - {name}\.ms:[\d.]+\|#ModelName:tsm,Level:Model"
                                rf"{host},requestID:req-7{stamp}")
    # a handler metric metrics.yaml does not name is dropped (model_metrics_auto_detect off)
    assert "SizeOfThing" not in model_metrics.read_text()
    # as TorchServe: in log mode its metrics are log lines, not on /metrics
    assert "Requests2XX" not in httpx.get(f"{ts_server.metrics}/metrics").text


def test_metric_lines_come_when_torchserve_writes_them(ts_server):
    """InferenceRequestHandler counts a request (ts_inference_requests_total) before it
    runs, and TorchServe's worker prints its metrics before it answers: test_metrics.py reads
    both files right after its request's answer (here they once came after it, and that test
    failed on a busy machine)."""
    logs = ts_server.root / "logs"
    counted = rf"{TIME} - ts_inference_requests_total\.Count:1\.0\|#model_name:tsm,.*"
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{ts_server.inference}/predictions/tsm",
                             json={"sleep": 2.0}, headers={"X-Request-ID": "slow-1"},
                             timeout=30)
        lines_of(logs / "ts_metrics.log", counted, timeout=1.5)
        assert not answer.done(), "counted only once answered"
        assert answer.result().status_code == 200
    # no waiting: the lines were written before the answer was sent
    assert re.search(r"PredictionTime\.ms:[\d.]+\|#ModelName:tsm,Level:Model\|#hostname:[^,]+,"
                     r"requestID:slow-1", (logs / "model_metrics.log").read_text())


def test_locations_and_a_metrics_config(tsm_store, tmp_path, monkeypatch):
    """test_metrics.py test_log_location_and_metric_location_vars_snapshot_enabled (files in
    $LOG_LOCATION and $METRICS_LOCATION), test_metrics_legacy_mode (no ts_inference_* lines),
    test_auto_detect_backend_metrics_log_mode and test_disable_system_metrics_using_config_
    properties; a metrics_config selects what is written (MetricCache)."""
    monkeypatch.setenv("LOG_LOCATION", str(tmp_path / "ts-logs"))
    monkeypatch.setenv("METRICS_LOCATION", str(tmp_path / "ts-metrics"))
    selection = tmp_path / "metrics.yaml"
    selection.write_text(textwrap.dedent("""\
        ts_metrics:
          counter:
            - {name: Requests2XX, unit: Count, dimensions: [Level, Hostname]}
            - {name: ts_inference_requests_total, unit: Count,
               dimensions: [model_name, model_version, hostname]}
          gauge:
            - {name: CPUUtilization, unit: Percent, dimensions: [Level, Hostname]}
        model_metrics:
          gauge:
            - {name: HandlerTime, unit: ms, dimensions: [ModelName, Level]}
        """))
    srv = start(tmp_path, tsm_store, {
        "metrics_mode": "legacy", "metrics_config": str(selection),
        "model_metrics_auto_detect": "true", "disable_system_metrics": "true"})
    try:
        assert sorted(p.name for p in (tmp_path / "ts-logs").glob("*.log")) == sorted(FILES)
        assert sorted(p.name for p in (tmp_path / "ts-metrics").glob("*")) == \
            sorted(METRIC_FILES)
        assert not (tmp_path / "logs").exists()
        r = httpx.post(f"{srv.inference}/predictions/tsm", json={"a": 1},
                       headers={"X-Request-ID": "req-8"})
        assert r.status_code == 200
        lines_of(tmp_path / "ts-logs" / "access_log.log", rf'{TIME} - .* 200 \d+')
        ts = lines_of(tmp_path / "ts-metrics" / "ts_metrics.log", rf"{TIME} - Requests2XX.*")
        assert not [line for line in ts if "ts_inference" in line or "CPU" in line
                    or "QueueTime" in line], ts
        model = lines_of(tmp_path / "ts-metrics" / "model_metrics.log",
                         rf"{TIME} - SizeOfThing\.Count:3\.0\|#ModelName:tsm,Level:Model"
                         r"\|#hostname:[^,]+,requestID:req-8,timestamp:\d+")
        # not in the selection, so auto-detected with the worker's unit name
        assert any(" - PredictionTime.Milliseconds:" in line for line in model)
        assert any(" - HandlerTime.ms:1.5|" in line for line in model)
    finally:
        assert not srv.stop()


def test_prometheus_mode_writes_no_metric_lines(tsm_store, tmp_path, monkeypatch):
    """test_metrics.py test_metrics_prometheus_mode: the files are there, with no metric."""
    monkeypatch.delenv("METRICS_LOCATION", raising=False)
    srv = start(tmp_path, tsm_store, {"metrics_mode": "prometheus"})
    try:
        assert httpx.post(f"{srv.inference}/predictions/tsm", json={}).status_code == 200
        lines_of(tmp_path / "logs" / "access_log.log", rf'{TIME} - .*"POST .* 200 \d+')
        for name in METRIC_FILES:
            assert (tmp_path / "logs" / name).read_text() == ""
        # ...the metrics are on /metrics as TorchServe's Java client writes them
        # (MetricBuilder: PrometheusCounter/PrometheusGauge; TextFormat.write004)
        text = httpx.get(f"{srv.metrics}/metrics").text
        for pattern in (r"# TYPE Requests2XX counter", r"# TYPE QueueTime gauge",
                        r'Requests2XX\{Level="Host",Hostname=".+",\} \d+\.\d+',
                        r'ts_inference_requests_total\{model_name="tsm",'
                        r'model_version="default",hostname=".+",\} 1\.0',
                        r'QueueTime\{Level="Host",Hostname=".+",\} \d+\.\d+',
                        r'WorkerLoadTime\{WorkerName=".+",Level="Host",Hostname=".+",\} \d+',
                        r'CPUUtilization\{Level="Host",Hostname=".+",\} \d+\.\d+',
                        r'HandlerTime\{ModelName="tsm",Level="Model",Hostname=".+",\} 1\.5',
                        r'PredictionTime\{ModelName="tsm",Level="Model",Hostname=".+",\}',
                        r"# TYPE GPUUtilization gauge"):  # listed before any sample
            assert len(re.findall(pattern, text)) == 1, pattern
        assert "SizeOfThing" not in text  # not in the selection, no auto-detection
        only = httpx.get(f"{srv.metrics}/metrics", params={"name[]": "QueueTime"}).text
        assert "# TYPE QueueTime gauge" in only and "Requests2XX" not in only
    finally:
        assert not srv.stop()


@pytest.mark.parametrize("mode", ["legacy", "log"])
def test_legacy_and_log_modes_keep_metrics_off_metrics_api(tsm_store, tmp_path, monkeypatch,
                                                            mode):
    """test_metrics.py test_metrics_legacy_mode: /metrics has only the ts_inference_*
    counters in legacy mode, and none of TorchServe's metrics in log mode (they are log
    lines); modelserve's own modelserve_* series stay."""
    monkeypatch.delenv("METRICS_LOCATION", raising=False)
    srv = start(tmp_path, tsm_store, {"metrics_mode": mode,
                                      "model_metrics_auto_detect": "true"})
    try:
        assert httpx.post(f"{srv.inference}/predictions/tsm", json={}).status_code == 200
        lines_of(tmp_path / "logs" / "model_metrics.log", r".* - SizeOfThing\.Count:3\.0\|.*")
        text = httpx.get(f"{srv.metrics}/metrics").text
        for name in ("Requests2XX", "QueueTime", "CPUUtilization", "HandlerTime",
                     "SizeOfThing"):
            assert name not in text
        legacy = 'ts_inference_requests_total{model_name="tsm",model_version="default"'
        assert (legacy in text) == (mode == "legacy")
        assert "modelserve_request_latency_seconds_bucket" in text
    finally:
        assert not srv.stop()


def test_modelserve_start_writes_no_log_files(tsm_store, tmp_path, monkeypatch):
    """modelserve's own defaults: no log_dir, so no files (logs go to stderr), Prometheus only;
    the access log stays off."""
    for name in ("LOG_LOCATION", "METRICS_LOCATION"):
        monkeypatch.setenv(name, str(tmp_path / "env-logs"))  # read only under --ts-config
    srv = start(tmp_path, tsm_store, None)
    try:
        assert httpx.post(f"{srv.inference}/predictions/tsm", json={}).status_code == 200
        assert "Requests2XX{" in httpx.get(f"{srv.metrics}/metrics").text
        assert [p.name for p in tmp_path.rglob("*.log")] == ["server.log"]  # the fixture's
        assert not (tmp_path / "logs").exists() and not (tmp_path / "env-logs").exists()
        assert "POST /predictions/tsm" not in srv.log()
    finally:
        assert not srv.stop()
