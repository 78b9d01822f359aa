"""Faults over real HTTP with real worker processes: killed and crashing workers, stuck
workers, overload, oversized bodies, loading and draining, SIGTERM under load."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    Server,
    handler_archive,
    named_processes,
    pid_alive,
    wait_for,
    wait_logged,
)

FAULT_HANDLER = textwrap.dedent('''
    """Test handler: echoes, sleeps, or dies on request; may load slowly."""
    import os
    import sys
    import time


    class FaultHandler:
        def initialize(self, context):
            time.sleep(float(context.model_yaml_config.get("init_sleep", 0)))
            if context.model_yaml_config.get("init_fail"):
                raise RuntimeError("asked to fail at load")

        def handle(self, data, context):
            out = []
            for row in data:
                body = row.get("data", row.get("body"))
                if isinstance(body, dict):
                    if "die" in body:
                        print("fault handler: dying on purpose", file=sys.stderr, flush=True)
                        os._exit(body["die"])
                    if "sleep" in body:
                        time.sleep(body["sleep"])
                    if "mark" in body:  # leaves proof that the handler ran this request
                        open(body["mark"], "w").close()
                out.append({"echo": body, "pid": os.getpid()})
            return out
''')


@pytest.fixture(scope="module")
def fault_store(tmp_path_factory: pytest.TempPathFactory, example_store: Path) -> Path:
    store = tmp_path_factory.mktemp("fault-store")
    shutil.copy(example_store / "digits.mar", store)  # a worker that takes a while to start
    src = tmp_path_factory.mktemp("fault-src")
    handler_archive(src, store, "fault", FAULT_HANDLER, {"batchSize": 1, "maxBatchDelay": 1})
    handler_archive(src, store, "slowload", FAULT_HANDLER, {"batchSize": 1, "init_sleep": 3})
    # initialize raises (float("never")): the model can never load
    handler_archive(src, store, "noload", FAULT_HANDLER, {"batchSize": 1, "init_sleep": "never"})
    # loads for 2 s, then fails
    handler_archive(src, store, "slowfail", FAULT_HANDLER,
                    {"batchSize": 1, "init_sleep": 2, "init_fail": True})
    handler_archive(src, store, "fault2", FAULT_HANDLER, {"batchSize": 1}, version="2.0")
    return store


@pytest.fixture
def make_server(fault_store: Path, tmp_path: Path):
    made: list[Server] = []

    def make(config: dict | None = None, models: list[str] | None = None) -> Server:
        root = tmp_path / f"srv{len(made)}"
        root.mkdir()
        srv = Server(root, fault_store, models if models is not None else ["fault.mar"],
                     extra_config=config or {})
        made.append(srv)
        return srv.start()

    yield make
    for srv in made:
        assert not srv.stop(), "a worker outlived its server"


def describe(srv: Server, name: str = "fault") -> dict:
    return httpx.get(f"{srv.management}/models/{name}").json()[0]


def describe_all(srv: Server, name: str) -> list[dict]:
    return httpx.get(f"{srv.management}/models/{name}/all").json()


def ready_pids(srv: Server, name: str = "fault") -> list[int]:
    return [w["pid"] for w in describe(srv, name)["workers"] if w["status"] == "READY"]


def predict(srv: Server, body: dict, name: str = "fault", timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{srv.inference}/predictions/{name}", json=body, timeout=timeout)


def test_sigkill_under_load_retries_inflight_requests_on_another_worker(make_server):
    srv = make_server({"default_workers_per_model": 2})
    victim = ready_pids(srv)[0]
    with ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(predict, srv, {"sleep": 0.2, "i": i}) for i in range(24)]
        time.sleep(0.5)  # both workers busy, batches in flight and queued
        os.kill(victim, signal.SIGKILL)
        responses = [f.result(timeout=60) for f in futures]
    assert [r.status_code for r in responses] == [200] * 24, [r.text for r in responses]
    assert sorted(r.json()["echo"]["i"] for r in responses) == list(range(24))
    wait_logged(srv, "retrying", "killed by signal SIGKILL")
    # restarted with backoff: two ready workers again, the victim among neither
    pids = wait_for(lambda: len(ready_pids(srv)) == 2 and ready_pids(srv))
    assert victim not in pids
    assert describe(srv)["workerRestarts"] >= 1


def test_worker_death_cause_reaches_the_client_and_the_log(make_server):
    srv = make_server()  # one worker: nowhere to retry, so the request gets the cause
    r = predict(srv, {"die": 3})
    assert r.status_code == 503
    body = r.json()
    assert body["type"] == "WorkerDiedException"
    assert "exit code 3" in body["message"], body
    assert "dying on purpose" in body["message"], body
    wait_logged(srv, "exit code 3", "dying on purpose")
    wait_for(lambda: ready_pids(srv))
    assert predict(srv, {"ok": 1}).status_code == 200


def test_poison_request_is_retried_once_then_answered_503(make_server):
    srv = make_server({"default_workers_per_model": 2})
    before = set(ready_pids(srv))
    r = predict(srv, {"die": 7})
    assert r.status_code == 503
    assert "retried once" in r.json()["message"] and "exit code 7" in r.json()["message"]
    # both workers died (the retry killed the second one); both are replaced
    after = wait_for(lambda: len(ready_pids(srv)) == 2 and set(ready_pids(srv)))
    assert not before & after


def test_crash_looping_model_is_marked_unhealthy(make_server):
    srv = make_server()
    for _ in range(3):
        wait_for(lambda: ready_pids(srv), timeout=60)
        assert predict(srv, {"die": 5}).status_code == 503
    wait_for(lambda: describe(srv)["health"] == "Unhealthy", timeout=10)
    ping = httpx.get(f"{srv.inference}/ping")
    assert (ping.status_code, ping.json()) == (500, {"status": "Unhealthy"})
    info = describe(srv)
    assert "exit code 5" in info["lastWorkerDeath"]
    wait_logged(srv, "crash-looping")


def test_stuck_worker_is_answered_504_and_recycled(make_server):
    srv = make_server()
    r = httpx.post(f"{srv.management}/models",
                   params={"url": "fault.mar", "model_name": "stuck", "response_timeout": 1})
    assert r.status_code == 200, r.text
    [pid] = ready_pids(srv, "stuck")
    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # the second waits, unread, in the worker's socket
        answers = list(pool.map(lambda _: predict(srv, {"sleep": 30}, name="stuck"), range(2)))
    # the first batch times out (504); the second, by a hair, either too or dies with it
    assert {r.status_code for r in answers} <= {503, 504}
    assert any(r.json()["type"] == "RequestTimeoutException" for r in answers)
    assert time.monotonic() - start < 10
    wait_for(lambda: not pid_alive(pid))
    new = wait_for(lambda: ready_pids(srv, "stuck"))
    assert pid not in new
    assert predict(srv, {"ok": 1}, name="stuck").status_code == 200
    wait_logged(srv, "recycled after exceeding response_timeout")
    # the reset of its socket is not taken for a protocol error
    assert describe(srv, "stuck")["lastWorkerDeath"].startswith(
        "recycled after exceeding response_timeout 1s; killed by signal SIGKILL")


def test_full_queue_is_503_at_once_with_retry_after(make_server):
    srv = make_server({"job_queue_size": 2, "pipeline_depth": 1})
    with ThreadPoolExecutor(12) as pool:
        slow = [pool.submit(predict, srv, {"sleep": 1.5}) for _ in range(3)]
        time.sleep(0.5)  # one on the worker, two queued: the queue is full
        start = time.monotonic()
        refused = [pool.submit(predict, srv, {"x": i}) for i in range(6)]
        quick = [f.result() for f in refused]
        elapsed = time.monotonic() - start
        assert all(f.result().status_code == 200 for f in slow)
    assert [r.status_code for r in quick] == [503] * 6
    assert elapsed < 1.0, "a full queue must refuse at once, not after waiting"
    assert all(r.headers["retry-after"] == "1" for r in quick)
    assert "job_queue_size" in quick[0].json()["message"]


def test_queued_request_of_a_client_that_left_is_not_run(make_server, tmp_path):
    """A client that disconnects while its request waits in the queue costs no model time:
    the batcher drops the request when it reaches it, and serves the ones behind it."""
    srv = make_server()  # one worker, batch size 1, two batches in its pipeline
    mark = tmp_path / "ran"
    body = json.dumps({"mark": str(mark)}).encode()
    url = httpx.URL(srv.inference)
    with ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(predict, srv, {"sleep": 1.0}) for _ in range(2)]
        time.sleep(0.3)  # both on the worker: the next request waits in the queue
        with socket.create_connection((url.host, url.port)) as client:
            client.sendall(b"POST /predictions/fault HTTP/1.1\r\nHost: t\r\n"
                           b"Content-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(0.2)
        after = pool.submit(predict, srv, {"after": True})
        assert [f.result().status_code for f in busy] == [200, 200]
        assert after.result().json()["echo"] == {"after": True}
    assert not mark.exists(), "the model ran the request of a client that had left"
    # the same request from a client that waits is run
    assert predict(srv, {"mark": str(mark)}).status_code == 200
    assert mark.exists()


def test_body_over_max_request_size_is_refused_before_it_is_read(make_server):
    srv = make_server({"max_request_size": 1000})
    port = srv.ports["inference"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # Declare 100 MB, send 10 bytes: the 413 must come without waiting for the rest.
        s.sendall(b"POST /predictions/fault HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
                  b"0123456789")
        start = time.monotonic()
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert time.monotonic() - start < 5

    def chunks():
        for _ in range(100):
            yield b"x" * 100

    r = httpx.post(f"{srv.inference}/predictions/fault", content=chunks())  # chunked
    assert r.status_code == 413 and "max_request_size" in r.json()["message"]


def test_ping_is_unhealthy_while_a_model_loads(make_server):
    srv = make_server()
    r = httpx.post(f"{srv.management}/models",
                   params={"url": "slowload.mar", "synchronous": "false"})
    assert r.status_code == 202
    ping = httpx.get(f"{srv.inference}/ping")
    assert (ping.status_code, ping.json()["status"]) == (500, "Unhealthy")
    assert describe(srv, "slowload")["health"] == "Loading"
    # OIP v2: live, not ready, the model not ready
    assert httpx.get(f"{srv.inference}/v2/health/live").status_code == 200
    assert httpx.get(f"{srv.inference}/v2/health/ready").json() == {"ready": False}
    assert httpx.get(f"{srv.inference}/v2/models/slowload/ready").json()["ready"] is False
    wait_for(lambda: httpx.get(f"{srv.inference}/ping").status_code == 200, timeout=60)
    assert describe(srv, "slowload")["health"] == "Healthy"
    assert httpx.get(f"{srv.inference}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{srv.inference}/v2/models/slowload/ready").json()["ready"] is True


def test_sigterm_under_load_finishes_inflight_and_leaves_no_process(make_server):
    srv = make_server({"default_workers_per_model": 2, "shutdown_grace_period": 20,
                       "drain_delay": 1.5})
    assert srv.proc is not None
    pids = {srv.proc.pid, *srv.worker_pids(), *srv.zygote_pids()}
    assert len(srv.worker_pids()) == 2 and len(pids) == 4
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(predict, srv, {"sleep": 0.5, "i": i}) for i in range(10)]
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # draining: not ready, yet still answering on the listeners for drain_delay
        ping = httpx.get(f"{srv.inference}/ping")
        assert (ping.status_code, ping.json()) == (503, {"status": "Draining"})
        assert httpx.get(f"{srv.inference}/v2/health/live").status_code == 200
        ready = httpx.get(f"{srv.inference}/v2/health/ready")
        assert (ready.status_code, ready.json()) == (400, {"ready": False})
        assert httpx.get(f"{srv.inference}/v2/models/fault/ready").json()["ready"] is False
        responses = [f.result(timeout=60) for f in futures]
    assert [r.status_code for r in responses] == [200] * 10
    assert srv.proc.wait(30) == 0
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.inference}/ping")


def test_killing_the_frontend_leaves_no_orphan_worker(make_server):
    srv = make_server()
    assert srv.proc is not None
    workers = srv.worker_pids() | srv.zygote_pids()
    assert len(workers) == 2
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(lambda: predict(srv, {"sleep": 30}, timeout=60))
        time.sleep(0.5)  # the worker is inside a long batch, not reading its socket
        srv.proc.kill()
        srv.proc.wait()
        with pytest.raises(httpx.HTTPError):
            busy.result()
    wait_for(lambda: not any(pid_alive(p) for p in workers), timeout=10)



def test_body_limit_refusal_is_the_usual_error_body():
    """BodyLimit's early 413 leaves as the app's own errors do (body shape, content type)."""
    from fastapi import FastAPI

    from modelserve.errors import ModelServeError
    from modelserve.server.transport.http.errors import install_error_handlers
    from modelserve.server.transport.http.limits import BodyLimit

    app = FastAPI()
    install_error_handlers(app)

    async def echo(request):
        raise ModelServeError(f"read {len(await request.body())} bytes", status=400)

    app.add_route("/echo", echo, methods=["POST"])

    async def post(body: bytes) -> httpx.Response:
        transport = httpx.ASGITransport(BodyLimit(app, 10))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/echo", content=body)

    inside = asyncio.run(post(b"small"))
    assert inside.status_code == 400 and inside.json()["message"] == "read 5 bytes"
    refused = asyncio.run(post(b"x" * 100))
    assert refused.status_code == 413
    assert refused.json() == {"code": 413, "type": "RequestEntityTooLargeException",
                              "message": "request body exceeds max_request_size (10 bytes)"}
    assert refused.headers["content-type"] == inside.headers["content-type"]
    assert refused.headers["connection"] == "close"


def test_management_body_over_max_request_size_is_413(make_server):
    srv = make_server({"max_request_size": 1000})
    big = {"url": "fault.mar", "model_name": "x" * 5000}
    r = httpx.post(f"{srv.management}/models", json=big)
    assert r.status_code == 413, r.text
    assert r.json()["type"] == "RequestEntityTooLargeException"

    def chunks():
        yield b'{"url": "fault.mar", "model_name": "'
        for _ in range(50):
            yield b"y" * 100
        yield b'"}'

    r = httpx.post(f"{srv.management}/models", content=chunks(),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert "max_request_size" in r.json()["message"]
    assert httpx.get(f"{srv.management}/models").status_code == 200


def test_scaling_to_zero_answers_the_queued_requests_at_once(make_server):
    """They used to wait out the queue timeout (response_timeout, 120 s) for a worker that
    no one would start."""
    srv = make_server({"pipeline_depth": 1})
    with ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(predict, srv, {"sleep": 2}) for _ in range(4)]
        time.sleep(0.5)  # one on the worker, three queued
        r = httpx.put(f"{srv.management}/models/fault", timeout=60,
                      params={"min_worker": 0, "max_worker": 0, "synchronous": "true"})
        assert r.status_code == 200, r.text
        answers = [f.result() for f in calls]  # predict() gives up after 60 s
    assert sorted(a.status_code for a in answers) == [200, 503, 503, 503]
    assert all("has no worker to serve" in a.json()["message"]
               for a in answers if a.status_code == 503)


def test_failed_asynchronous_registration_answers_503_at_once(make_server):
    """A worker that fails to start after a 202 is started again with backoff (TorchServe's
    WorkerThread: "Retry worker: 9000 in 1 seconds."), and requests meanwhile get 503 at
    once instead of waiting for a worker that may never come."""
    srv = make_server()
    r = httpx.post(f"{srv.management}/models", timeout=60,
                   params={"url": "noload.mar", "synchronous": "false"})
    assert r.status_code == 202, r.text
    wait_for(lambda: "a noload worker failed to start" in srv.log())
    r = predict(srv, {"x": 1}, name="noload", timeout=30)
    assert r.status_code == 503, r.text
    assert "has no worker to serve" in r.json()["message"]
    assert "failed to start" in r.json()["message"]
    wait_for(lambda: srv.log().count("a noload worker failed to start") >= 2, timeout=60)
    assert "Retry worker: noload in 1 seconds." in srv.log()


def test_workers_stopped_while_they_start_leave_no_process(make_server):
    """Scaling down or unregistering while workers are still being forked or loading: the
    pool used to drop them while their start went on to mark them ready, unowned."""
    srv = make_server(models=["digits.mar"])
    manage = f"{srv.management}/models/digits"
    with httpx.Client(timeout=60) as client:  # keep-alive: the calls follow each other closely
        for _ in range(2):
            assert client.put(manage, params={"min_worker": 3}).status_code == 202
            assert client.put(manage, params={"min_worker": 1}).status_code == 202
            time.sleep(2)  # every start has settled
            workers = named_processes("ms:digits", srv.proc.pid)
            assert len(workers) == 1, f"{workers} for {describe(srv, 'digits')['workers']}"
        assert client.put(manage, params={"min_worker": 3}).status_code == 202
        assert client.delete(manage).status_code == 200
        wait_for(lambda: not named_processes("ms:digits", srv.proc.pid), timeout=10)
        # a synchronous scale that waited for the lock behind the unregister finds no model
        late = client.put(manage, params={"min_worker": 2, "synchronous": "true"})
        assert late.status_code == 404


def test_failed_default_version_leaves_and_the_other_becomes_default(make_server):
    """Version 1.0 (the first, so the default) fails to load while 2.0 registers: 1.0 used
    to stay registered and default with a closed queue, and its requests hung forever."""
    srv = make_server(models=[])
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{srv.management}/models",
                            params={"url": "slowfail.mar"}, timeout=60)
        time.sleep(0.5)
        second = httpx.post(f"{srv.management}/models", timeout=60,
                            params={"url": "fault2.mar", "model_name": "slowfail"})
        assert second.status_code == 200, second.text
        assert first.result().status_code == 500
    assert [d["modelVersion"] for d in describe_all(srv, "slowfail")] == ["2.0"]
    r = predict(srv, {"x": 1}, name="slowfail", timeout=10)
    assert r.status_code == 200 and r.json()["echo"] == {"x": 1}


def test_registration_unregistered_while_it_starts_is_409_and_a_newer_one_stays(make_server):
    srv = make_server(models=[])
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{srv.management}/models",
                            params={"url": "slowfail.mar"}, timeout=60)
        time.sleep(0.5)  # its worker loads
        assert httpx.delete(f"{srv.management}/models/slowfail", timeout=60).status_code == 200
        newer = httpx.post(f"{srv.management}/models", timeout=60,
                           params={"url": "fault.mar", "model_name": "slowfail"})
        assert newer.status_code == 200, newer.text  # fault.mar is version 1.0 too
        r = first.result()
    assert r.status_code == 409 and "unregistered while its workers started" in r.text
    assert describe(srv, "slowfail")["modelUrl"] == "fault.mar"
    assert predict(srv, {"x": 1}, name="slowfail", timeout=10).status_code == 200


def test_registering_again_while_the_old_unregister_drains_keeps_the_metrics(make_server):
    """The old version's cleanup, finishing last, used to remove the series the new
    registration of the same name and version records into."""
    srv = make_server()
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(predict, srv, {"sleep": 3})
        time.sleep(0.5)
        delete = pool.submit(httpx.delete, f"{srv.management}/models/fault", timeout=60)
        time.sleep(0.5)  # unregistered; it waits for the slow request
        again = httpx.post(f"{srv.management}/models", params={"url": "fault.mar"}, timeout=60)
        assert again.status_code == 200, again.text
        assert slow.result().status_code == 200 and delete.result().status_code == 200
    assert predict(srv, {"x": 1}).status_code == 200
    text = httpx.get(f"{srv.metrics}/metrics").text
    assert 'modelserve_request_latency_seconds_count{model_name="fault",model_version="1.0"}' \
        in text


def test_unregistering_a_model_while_its_worker_loads_is_quiet(make_server):
    """The worker finds its socket closed when it reports ready: it exits without the
    BrokenPipeError traceback it used to print into the server's log."""
    srv = make_server()
    r = httpx.post(f"{srv.management}/models", timeout=60,
                   params={"url": "slowload.mar", "synchronous": "false"})
    assert r.status_code == 202, r.text
    [worker] = wait_for(lambda: [w for w in describe(srv, "slowload")["workers"]
                                 if w.get("pid")])
    r = httpx.delete(f"{srv.management}/models/slowload", timeout=60)
    assert r.status_code == 200, r.text
    wait_for(lambda: not pid_alive(worker["pid"]))  # it got to its ready message and left
    assert "Traceback" not in srv.log() and "BrokenPipeError" not in srv.log()
    assert predict(srv, {"x": 1}).status_code == 200  # the server serves on
