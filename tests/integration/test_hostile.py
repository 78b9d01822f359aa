"""Hostile clients against a real server whose descriptor limit is lowered in its own
process: slow clients get 408 and cannot starve it, start-up under a flood of connections
loads every model, and models named at start are retried until loaded, readiness waiting
for them (both personalities)."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import resource
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import httpx
import pytest

from tests.conftest import ECHO_HANDLER, Server, handler_archive, wait_for, wait_logged

# Fails to load until the file named in model-config.yaml's "marker" exists.
GATED_HANDLER = textwrap.dedent('''
    import os


    class GatedHandler:
        def initialize(self, context):
            marker = context.model_yaml_config["marker"]
            if not os.path.exists(marker):
                raise RuntimeError(f"waiting for {marker}")

        def handle(self, data, context):
            return [{"ok": True} for _ in data]
''')


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("hostile-store")
    src = tmp_path_factory.mktemp("hostile-src")
    handler_archive(src, store, "echo", ECHO_HANDLER, {})
    marker = tmp_path_factory.mktemp("hostile-marker") / "ready"
    handler_archive(src, store, "gated", GATED_HANDLER, {"marker": str(marker)})
    return store


def gated_marker(store: Path) -> Path:
    import zipfile

    import yaml

    with zipfile.ZipFile(store / "gated.mar") as zf:
        return Path(yaml.safe_load(zf.read("model-config.yaml"))["marker"])


@dataclass
class LimitedServer(Server):
    """A server whose RLIMIT_NOFILE (soft and hard) is ``nofile``, set in its own process.
    ``start`` returns once /ping answers at all (200, or 500 while models load or fail)."""

    nofile: int = 256

    def _start_once(self, timeout: float) -> LimitedServer:
        real = subprocess.Popen

        def limited() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

        def popen(*args, **kwargs):  # the fixture's Popen, with the limit
            return real(*args, preexec_fn=limited, **kwargs)

        def any_answer(url: str, **kwargs) -> httpx.Response:  # its wait for /ping 200
            answer = httpx.request("GET", url, **kwargs)
            return httpx.Response(200) if answer.status_code in (200, 500) else answer

        self.extra_config = {"log_level": "info", **self.extra_config}
        log = self.log_path
        with mock.patch.object(subprocess, "Popen", popen), \
                mock.patch.object(httpx, "get", any_answer), \
                mock.patch.object(self, "log", lambda: log.read_text(errors="replace")
                                  + "Press Ctrl-C"):  # and for the banner: not here
            return super()._start_once(timeout)  # type: ignore[return-value]


def metric(srv: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{srv.metrics}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def slow_connection(srv: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.ports["inference"]), timeout=30)
    sock.sendall(b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n")
    return sock


def answer_of(sock: socket.socket) -> bytes:
    """What the server wrote before closing (b"" for a plain close)."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    sock.close()
    return data


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for srv in made:
        assert not srv.stop(), "a worker outlived its server"


def test_slow_clients_get_408_and_cannot_starve_the_server(hostile_store, tmp_path, servers):
    srv = LimitedServer(tmp_path, hostile_store, ["echo.mar"], nofile=256, extra_config={
        "request_header_timeout": 4, "access_log": True})
    servers.append(srv.start())
    wait_logged(srv, "descriptor limit: soft 256", "max_connections 128")
    wait_for(lambda: httpx.get(f"{srv.inference}/ping").status_code == 200, 60)
    slow = [slow_connection(srv) for _ in range(300)]  # more than the cap
    for _ in range(5):  # normal clients are served beside them
        assert httpx.get(f"{srv.inference}/ping", timeout=10).status_code == 200
        r = httpx.post(f"{srv.inference}/predictions/echo", json={"a": 1}, timeout=10)
        assert r.status_code == 200, r.text
    for sock in slow[-20:]:  # trickling header lines does not extend the deadline
        with contextlib.suppress(OSError):
            sock.sendall(b"X-Slow: 1\r\n")
    answers = [answer_of(sock) for sock in slow]
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408 ")]
    evicted = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
    assert len(timed_out) + len(evicted) == 300
    assert len(evicted) >= 300 - 128 and timed_out, (len(evicted), len(timed_out))
    assert b"request_header_timeout (4 s)" in timed_out[0]
    assert metric(srv, "modelserve_http_request_timeouts_total", phase="head") == len(timed_out)
    assert metric(srv, "modelserve_http_connections_evicted_total") == len(evicted)
    wait_logged(srv, '"status":408,', '"reason":"RequestTimeoutException"')
    assert httpx.get(f"{srv.inference}/ping").status_code == 200


class _GatedArchive(http.server.BaseHTTPRequestHandler):
    """Serves one archive once the test opens the gate: the server's start-up waits on it."""

    body = b""
    gate = threading.Event()

    def do_GET(self) -> None:
        self.gate.wait(60)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gated_archive(hostile_store: Path) -> Iterator[tuple[str, threading.Event]]:
    gate = threading.Event()
    handler = type("Gated", (_GatedArchive,), {
        "body": (hostile_store / "echo.mar").read_bytes(), "gate": gate})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/echo.mar", gate
    gate.set()
    httpd.shutdown()


def test_start_up_under_a_flood_loads_every_model(hostile_store, tmp_path, servers,
                                                  gated_archive):
    url, gate = gated_archive
    srv = LimitedServer(tmp_path, hostile_store, [f"flood={url}", "echo.mar"], nofile=256,
                        extra_config={"allowed_urls": [re.escape(url)]})
    servers.append(srv.start())  # registering: the archive's download waits at the gate
    r = httpx.get(f"{srv.inference}/ping")
    assert (r.status_code, r.json()) == (500, {"status": "Unhealthy"})
    flood = [slow_connection(srv) for _ in range(400)]  # all the descriptors it would take
    gate.set()
    wait_logged(srv, "Model server started.", timeout=60)
    wait_for(lambda: httpx.get(f"{srv.inference}/ping", timeout=10).status_code == 200, 60)
    models = httpx.get(f"{srv.management}/models").json()["models"]
    assert sorted(m["modelName"] for m in models) == ["echo", "flood"]
    r = httpx.post(f"{srv.inference}/predictions/flood", json={"a": 1}, timeout=10)
    assert r.status_code == 200, r.text
    assert "Too many open files" not in srv.log()
    for sock in flood:
        sock.close()


def test_a_start_that_runs_out_of_descriptors_is_retried(hostile_store, tmp_path, servers,
                                                         gated_archive):
    """max_connections set past the limit (the cap's reserve given away): the start fails
    with EMFILE while the flood holds every descriptor, and is retried once it is gone."""
    url, gate = gated_archive
    srv = LimitedServer(tmp_path, hostile_store, [f"flood={url}"], nofile=160, extra_config={
        "allowed_urls": [re.escape(url)], "max_connections": 10_000})
    servers.append(srv.start())
    wait_logged(srv, "clients can starve them")
    flood = []
    with contextlib.suppress(OSError):
        for _ in range(400):
            flood.append(slow_connection(srv))
    time.sleep(1)  # the server accepted what it could
    gate.set()
    wait_logged(srv, "Too many open files", timeout=60)
    for sock in flood:
        sock.close()
    wait_for(lambda: httpx.get(f"{srv.inference}/ping", timeout=10).status_code == 200, 90)
    log = srv.log()
    assert "retrying" in log or "Retry worker" in log  # the archive's open, or its workers
    assert [m["modelName"] for m in httpx.get(f"{srv.management}/models").json()["models"]] \
        == ["flood"]


@pytest.mark.parametrize("personality", ["modelserve", "torchserve"])
def test_workers_that_fail_at_start_are_retried_and_readiness_waits(
        personality, hostile_store, tmp_path, servers):
    marker = gated_marker(hostile_store)
    marker.unlink(missing_ok=True)
    args = []
    if personality == "torchserve":
        props = tmp_path / "config.properties"
        props.write_text("disable_token_authorization=true\n")
        args = ["--ts-config", str(props)]
    srv = LimitedServer(tmp_path, hostile_store, ["gated.mar"], extra_args=args)
    servers.append(srv.start())
    try:
        wait_logged(srv, "waiting for", "Retry worker", timeout=60)
        r = httpx.get(f"{srv.inference}/ping")
        assert (r.status_code, r.json()) == (500, {"status": "Unhealthy"})
        assert httpx.get(f"{srv.inference}/v2/health/ready").status_code != 200
        described = httpx.get(f"{srv.management}/models/gated").json()[0]
        assert described["health"] in ("Loading", "Unhealthy")
        assert "waiting for" in described["lastWorkerDeath"]
        marker.touch()
        wait_for(lambda: httpx.get(f"{srv.inference}/ping").status_code == 200, 90)
        assert httpx.get(f"{srv.inference}/v2/health/ready").status_code == 200
        r = httpx.post(f"{srv.inference}/predictions/gated", json={"a": 1}, timeout=10)
        assert r.status_code == 200, r.text
    finally:
        marker.unlink(missing_ok=True)


@pytest.mark.parametrize("opt_out", [False, True])
def test_a_model_that_cannot_load_keeps_readiness_false_unless_opted_out(
        opt_out, hostile_store, tmp_path, servers):
    srv = LimitedServer(tmp_path, hostile_store, ["echo.mar", "missing=missing.mar"],
                        extra_config={"ready_with_failed_models": opt_out})
    servers.append(srv.start())
    wait_logged(srv, "Model server started.")
    assert httpx.get(f"{srv.inference}/ping").status_code == (200 if opt_out else 500)
    r = httpx.get(f"{srv.management}/models/missing")
    assert r.status_code == 404
    assert "named at start, not loaded (failed for good)" in r.json()["message"]
    assert "Model not found in model store: missing.mar" in r.json()["message"]
    r = httpx.post(f"{srv.inference}/predictions/echo", json={"a": 1}, timeout=10)
    assert r.status_code == 200  # the others serve either way


def test_a_snapshot_model_that_does_not_load_stays_in_the_snapshot(hostile_store, tmp_path,
                                                                  servers):
    srv = LimitedServer(tmp_path, hostile_store, ["echo.mar"])
    state = tmp_path / "work" / "state" / "models.json"
    state.parent.mkdir(parents=True)
    gone = {"name": "gone", "url": "gone.mar", "version": "1.0", "default": True,
            "workers": 1}
    state.write_text(json.dumps({"format": 1, "models": [gone]}))
    servers.append(srv.start())
    wait_logged(srv, "Model server started.")
    assert httpx.get(f"{srv.inference}/ping").status_code == 500
    r = httpx.put(f"{srv.management}/models/echo", params={"min_worker": 2})
    assert r.status_code in (200, 202)  # a change: the snapshot is written again

    def saved() -> dict:
        return {m["name"]: m for m in json.loads(state.read_text())["models"]}

    wait_for(lambda: saved().get("echo", {}).get("workers") == 2)
    assert saved()["gone"] == gone
