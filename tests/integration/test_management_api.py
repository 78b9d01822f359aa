"""Management API lifecycle, worker recovery and clean shutdown, over real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import httpx
import pytest

from modelserve.cli import DIGIT_ZERO
from tests.conftest import copy_archive, pid_alive, wait_for, wait_logged
from tests.integration.test_archive_attacks import HANDLER, manifest, zip_archive


def describe(server, name: str) -> dict:
    r = httpx.get(f"{server.management}/models/{name}")
    assert r.status_code == 200, r.text
    [model] = r.json()
    return model


def test_list_models(server):
    r = httpx.get(f"{server.management}/models")
    names = [m["modelName"] for m in r.json()["models"]]
    assert names == sorted(names)
    assert {"digits", "digits_onnx", "echo"} <= set(names)
    r = httpx.get(f"{server.management}/models", params={"limit": 1})
    body = r.json()
    assert len(body["models"]) == 1 and body["nextPageToken"] == "1"


def test_describe_shows_workers_with_pid_and_status(server):
    model = describe(server, "digits")
    assert model["modelName"] == "digits" and model["modelVersion"] == "1.0"
    assert model["batchSize"] == 8 and model["maxBatchDelay"] == 5
    [worker] = model["workers"]
    assert worker["status"] == "READY" and pid_alive(worker["pid"])
    assert worker["memoryUsage"] > 0


def test_register_predict_scale_unregister(server):
    copy_archive(server.store, "digits.mar", "digits_copy.mar")
    r = httpx.post(f"{server.management}/models",
                   params={"url": "digits_copy.mar", "model_name": "digits2",
                           "initial_workers": 1, "batch_size": 4, "max_batch_delay": 10},
                   timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == 'Model "digits2" Version: 1.0 registered with 1 initial workers'
    assert describe(server, "digits2")["batchSize"] == 4

    r = httpx.post(f"{server.inference}/predictions/digits2", json=DIGIT_ZERO)
    assert r.status_code == 200 and r.json()["class"] == 0

    r = httpx.put(f"{server.management}/models/digits2",
                  params={"min_worker": 3, "synchronous": "true"}, timeout=120)
    assert r.status_code == 200, r.text
    workers = describe(server, "digits2")["workers"]
    assert len(workers) == 3 and all(w["status"] == "READY" for w in workers)
    pids = {w["pid"] for w in workers}
    assert all(pid_alive(p) for p in pids)

    r = httpx.put(f"{server.management}/models/digits2",
                  params={"min_worker": 1, "synchronous": "true"}, timeout=120)
    assert r.status_code == 200
    [kept] = describe(server, "digits2")["workers"]
    stopped = pids - {kept["pid"]}
    wait_for(lambda: not any(pid_alive(p) for p in stopped), timeout=15)

    r = httpx.delete(f"{server.management}/models/digits2", timeout=60)
    assert r.status_code == 200
    assert r.json() == {"status": 'Model "digits2" unregistered'}
    wait_for(lambda: not pid_alive(kept["pid"]), timeout=15)
    assert httpx.post(f"{server.inference}/predictions/digits2",
                      json=DIGIT_ZERO).status_code == 404
    assert httpx.get(f"{server.management}/models/digits2").status_code == 404


def test_async_registration_returns_202_then_loads(server):
    copy_archive(server.store, "digits_onnx.mar", "digits_async.mar")
    r = httpx.post(f"{server.management}/models",
                   params={"url": "digits_async.mar", "model_name": "digits_async",
                           "initial_workers": 1, "synchronous": "false"})
    assert r.status_code == 202
    assert r.json() == {"status": "Processing worker updates..."}
    wait_for(lambda: describe(server, "digits_async")["workers"]
             and describe(server, "digits_async")["workers"][0]["status"] == "READY",
             timeout=60)
    r = httpx.post(f"{server.inference}/predictions/digits_async", json=DIGIT_ZERO)
    assert r.status_code == 200
    assert httpx.delete(f"{server.management}/models/digits_async").status_code == 200


def test_zero_workers_then_predict_is_503(server):
    copy_archive(server.store, "digits.mar", "digits_idle.mar")
    r = httpx.post(f"{server.management}/models",
                   params={"url": "digits_idle.mar", "model_name": "idle", "initial_workers": 0})
    assert r.status_code == 200
    assert "registered with 0 initial workers" in r.json()["status"]
    r = httpx.post(f"{server.inference}/predictions/idle", json=DIGIT_ZERO)
    assert r.status_code == 503
    assert "no worker" in r.json()["message"]
    assert httpx.delete(f"{server.management}/models/idle").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "pattern"),
    [
        ("post", "/models", {}, 400, "url is required"),
        ("post", "/models", {"url": "missing.mar"}, 404, "not found"),
        ("post", "/models", {"url": "digits.mar", "model_name": "digits"}, 409,
         "already registered"),
        ("post", "/models", {"url": "digits.mar", "batch_size": "zero"}, 400, "batch_size"),
        ("post", "/models", {"url": "http://example.com/x.mar"}, 400, "allowed URL"),
        ("post", "/models", {"url": "/etc/passwd"}, 400, "outside the model store"),
        ("post", "/models", {"url": "../../x.mar"}, 400, "outside the model store"),
        ("post", "/models", {"url": "digits.mar", "runtime": "LSP"}, 400, "RuntimeType"),
        ("post", "/models", {"url": "digits.mar", "model_name": "bad name!"}, 400,
         "model_name"),
        ("get", "/models/nope", {}, 404, "Model not found: nope"),
        ("put", "/models/nope", {"min_worker": 1}, 404, "Model not found"),
        ("put", "/models/digits", {"min_worker": 2, "max_worker": 1}, 400,
         "max_worker cannot be less than min_worker"),
        ("put", "/models/digits", {"min_worker": -1}, 400, "negative"),
        ("put", "/models/digits", {"min_worker": 100000}, 400,
         r"min_worker / max_worker of 100000 is over max_workers_per_model \(64\)"),
        ("put", "/models/digits", {"min_worker": 1, "max_worker": 65}, 400,
         "over max_workers_per_model"),
        ("post", "/models", {"url": "digits.mar", "model_name": "many",
                             "initial_workers": 65}, 400, "initial_workers of 65 is over"),
        ("delete", "/models/nope", {}, 404, "Model not found"),
        ("delete", "/models/digits/7.0", {}, 404, "version 7.0"),
        # these were 500s, at once or on a later call
        ("post", "/models", {"url": "\x00"}, 400, "must not contain a NUL"),
        ("post", "/models", {"url": "file:///tmp/%00"}, 400, "must not contain a NUL"),
        ("post", "/models", {"url": "a" * 5000 + ".mar"}, 400, "File name too long"),
        ("post", "/models", {"url": "digits.mar", "model_name": "d8",
                             "max_batch_delay": "inf"}, 400, "finite number"),
        ("post", "/models", {"url": "digits.mar", "model_name": "d8",
                             "response_timeout": "inf"}, 400, "finite number"),
        ("post", "/models", {"url": "digits.mar", "model_name": "d5",
                             "batch_size": str(10 ** 23)}, 400, "less than or equal to"),
        ("post", "/models", {"url": "digits.mar", "model_name": "h0",
                             "handler": "x\x00.py"}, 400, "handler"),
    ],
)
def test_management_errors(server, method, path, params, status, pattern):
    r = httpx.request(method.upper(), f"{server.management}{path}", params=params, timeout=60)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "type", "message"}
    assert re.search(pattern, body["message"]), body["message"]


def test_corrupt_archive_is_400(server, tmp_path):
    bad = server.store / "corrupt.mar"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip")
    r = httpx.post(f"{server.management}/models", params={"url": "corrupt.mar"})
    assert r.status_code == 400
    assert "corrupt.mar" in r.json()["message"]


def raw_archive(path, name: str, version: str = "1.0", config: bytes | None = None) -> None:
    """A .mar written by hand: any manifest name and version, any model-config.yaml bytes."""
    extra = {} if config is None else {"configFile": "model-config.yaml"}
    members = [("MAR-INF/MANIFEST.json", manifest(modelName=name, modelVersion=version, **extra)),
               ("h.py", HANDLER)]
    if config is not None:
        members.append(("model-config.yaml", config))
    zip_archive(path, members)


@pytest.mark.parametrize(("name", "version", "config", "pattern"), [
    # JSON cannot carry these to a worker: registration used to fail with a 500 after the
    # version was added, leaving it stuck ("Loading", 409 on a retry) and the server unable
    # to start again from its snapshot
    ("cfgdate", "1.0", b"when: 2020-01-01\n", r"model-config.yaml: TypeError"),
    ("cfgset", "1.0", b"s: !!set {a: null}\n", r"model-config.yaml: TypeError"),
    ("cfgloop", "1.0", b"a: &a [*a]\n", r"model-config.yaml: ValueError"),
    ("cfgutf", "1.0", b"a: \xff\xfe\n", r"model-config.yaml: UnicodeDecodeError"),
    ("cfgtpu", "1.0", b"deviceType: tpu\n", r"deviceType"),
    # a name or version that is not one URL path segment: registered, then never found again
    ("a/b", "1.0", None, r"invalid model name 'a/b'"),
    ("", "1.0", None, r"invalid model name ''"),
    ("../evil", "1.0", None, r"invalid model name '../evil'"),
    ("okname", "1/2", None, r"invalid model version '1/2'"),
    ("okname", "all", None, r"invalid model version 'all'"),
])
def test_archive_contents_that_cannot_be_served_are_400(server, name, version, config, pattern):
    archive = server.store / f"bad-{abs(hash((name, version, config)))}.mar"
    raw_archive(archive, name, version, config)
    try:
        r = httpx.post(f"{server.management}/models", params={"url": archive.name}, timeout=60)
        assert r.status_code == 400, r.text
        assert re.search(pattern, r.json()["message"]), r.json()["message"]
        listed = {m["modelName"] for m in httpx.get(f"{server.management}/models").json()["models"]}
        assert name not in listed
    finally:
        archive.unlink()


def test_killed_worker_is_replaced_and_requests_succeed(server):
    [worker] = describe(server, "echo")["workers"]
    os.kill(worker["pid"], signal.SIGKILL)

    def replaced():
        workers = describe(server, "echo")["workers"]
        return workers and workers[0]["pid"] != worker["pid"] and workers[0]["status"] == "READY"

    wait_for(replaced, timeout=60)
    for i in range(5):
        r = httpx.post(f"{server.inference}/predictions/echo", json={"n": i})
        assert r.status_code == 200 and r.json()["echo"] == {"n": i}
    wait_logged(server, "killed by signal SIGKILL")


def test_inflight_requests_on_a_killed_worker_get_a_clear_error(server):
    import threading

    [worker] = describe(server, "echo")["workers"]
    result: dict = {}

    def slow_request():
        result["r"] = httpx.post(f"{server.inference}/predictions/echo",
                                 json={"sleep": 30}, timeout=60)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(1.0)  # the request is now inside the worker
    os.kill(worker["pid"], signal.SIGKILL)
    thread.join(30)
    r = result["r"]
    assert r.status_code == 503
    assert "died" in r.json()["message"] and "SIGKILL" in r.json()["message"]
    wait_for(lambda: [w["status"] for w in describe(server, "echo")["workers"]] == ["READY"],
             timeout=60)


def test_sigterm_stops_server_and_every_worker(isolated_server):
    isolated_server.start()
    workers = isolated_server.worker_pids()
    assert workers
    survivors = isolated_server.stop()
    assert not survivors
    assert isolated_server.proc.returncode == 0
    assert not any(pid_alive(p) for p in workers)


def test_ctrl_c_stops_server_and_every_worker(isolated_server):
    """Ctrl-C sends SIGINT to the whole process group: workers must leave it to the server."""
    isolated_server.start()
    workers = isolated_server.worker_pids()
    os.kill(isolated_server.proc.pid, signal.SIGINT)
    for pid in workers:
        if pid_alive(pid):
            os.kill(pid, signal.SIGINT)  # what the terminal does to the group
    isolated_server.proc.wait(30)
    wait_for(lambda: not any(pid_alive(p) for p in workers), timeout=10)
    assert isolated_server.proc.returncode == 0


def scrape(server) -> dict[str, list[tuple[dict, float]]]:
    """Samples by name, parsed with prometheus-client's own text parser."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.metrics}/metrics").text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_metrics_use_torchserve_names(server):
    httpx.post(f"{server.inference}/predictions/digits", json=DIGIT_ZERO)
    samples = scrape(server)
    for name in ("ts_inference_requests_total", "ts_inference_latency_microseconds",
                 "ts_queue_latency_microseconds"):
        [(labels, value)] = [s for s in samples[name] if s[0]["model_name"] == "digits"
                             and s[0]["model_version"] == "default"]
        assert labels["hostname"]
        assert value > 0
    [(labels, value)] = samples["Requests2XX"]
    assert labels["Level"] == "Host" and value >= 1
    ours = {"model_name": "digits", "model_version": "1.0"}
    for name in ("modelserve_request_latency_seconds_bucket",
                 "modelserve_queue_time_seconds_bucket", "modelserve_batch_size_bucket"):
        assert any(ours.items() <= labels.items() for labels, _ in samples[name])
    assert (ours, 1.0) in samples["modelserve_workers"]
    assert not any(name.endswith("_created") for name in samples)


def test_model_that_fails_to_load_is_500_with_its_cause(server, tmp_path):
    from modelserve.archive import create_archive

    handler = tmp_path / "broken_handler.py"
    handler.write_text(
        "class Broken:\n"
        "    def initialize(self, context):\n"
        "        raise RuntimeError('weights are corrupt')\n"
        "    def handle(self, data, context):\n"
        "        return data\n"
    )
    create_archive(model_name="broken", version="1.0", handler=str(handler),
                   export_path=server.store, force=True)
    r = httpx.post(f"{server.management}/models",
                   params={"url": "broken.mar", "initial_workers": 1}, timeout=120)
    assert r.status_code == 500
    assert "weights are corrupt" in r.json()["message"]
    assert httpx.get(f"{server.management}/models/broken").status_code == 404


def test_process_metrics_are_exported(server):
    samples = scrape(server)
    ours = {"model_name": "digits", "model_version": "1.0"}
    [(labels, memory)] = [s for s in samples["modelserve_worker_memory_bytes"]
                          if ours.items() <= s[0].items()]
    assert memory > 10 * 2**20 and labels["worker_id"]
    assert any(v > 0 for labels, v in samples["modelserve_worker_cpu_seconds_total"]
               if ours.items() <= labels.items())
    assert any(v > 0 for labels, v in samples["modelserve_model_load_seconds"]
               if labels == ours)
    assert (ours, 0.0) in samples["modelserve_inflight_requests"]
    assert any(labels == ours for labels, _ in samples["modelserve_worker_restarts_total"])


def test_access_log_is_json_lines(isolated_server):

    isolated_server.extra_config = {"access_log": True}
    isolated_server.start()
    r = httpx.post(f"{isolated_server.inference}/predictions/echo", json={"a": 1},
                   headers={"X-Request-ID": "req-42"})
    assert r.status_code == 200
    httpx.post(f"{isolated_server.inference}/predictions/nope", json={})
    # both lines asserted on are waited for: the access log is written after the answer
    log = wait_logged(isolated_server, '"req-42"', '"/predictions/nope"')
    lines = [json.loads(line.split("modelserve.access: ", 1)[1])
             for line in log.splitlines() if "modelserve.access: " in line]
    [entry] = [e for e in lines if e["request_id"] == "req-42"]
    assert entry["model"] == "echo" and entry["status"] == 200 and entry["batch_size"] == 1
    assert entry["path"] == "/predictions/echo" and entry["latency_ms"] > 0
    assert any(e["path"] == "/predictions/nope" and e["status"] == 404 for e in lines)


def test_customized_describe_error_is_the_workers_error_document(tmp_path):
    """A describe_handle that fails answers with the worker's own error (status, type,
    message), not that document as a string inside another message."""
    import asyncio
    from types import SimpleNamespace

    import orjson

    from modelserve.config import Settings
    from modelserve.errors import ModelServeError
    from modelserve.server.engine.dataplane import DataPlane
    from modelserve.server.engine.jobs import Result
    from modelserve.server.observability.metrics import ServerMetrics

    plane = DataPlane(Settings(workdir=tmp_path), ServerMetrics())
    worker_body = orjson.dumps({"code": 418, "type": "BadRequestException",
                                "message": "no description"})

    async def infer(*args):
        return Result(418, "application/json", worker_body, {})

    plane.infer = infer  # type: ignore[method-assign]
    with pytest.raises(ModelServeError) as info:
        model = SimpleNamespace(name="m", version="1.0")
        asyncio.run(plane._customized(model))  # type: ignore[arg-type]
    assert info.value.body() == orjson.loads(worker_body)
    plain = ModelServeError.from_body(503, b"not json")
    assert (plain.status, plain.type, plain.message) == (
        503, "InternalServerException", "not json")
