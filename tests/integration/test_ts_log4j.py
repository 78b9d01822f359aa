"""A TorchServe deployment's own log4j2 file, on real servers: the levels it gives ACCESS_LOG,
MODEL_LOG, TS_METRICS and MODEL_METRICS (else Root) are those of TorchServe's log files here,
whether config.properties' vmargs names it or `torchserve --log-config` does (which wins, as in
TorchServe's ts/model_server.py). test_ts_log_files.py covers the default levels."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, free_port, handler_archive, wait_for

HANDLER = textwrap.dedent('''
    def handle(data, context):
        if data is None:
            return None
        print("quiet handler ran", flush=True)
        return [{"ok": True} for _ in data]
''')
QUIET = textwrap.dedent("""\
    <?xml version="1.0" encoding="UTF-8"?>
    <Configuration status="WARN">
      <Appenders><Console name="STDOUT" target="SYSTEM_OUT">
        <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/></Console></Appenders>
      <Loggers><Root level="warn"><AppenderRef ref="STDOUT"/></Root></Loggers>
    </Configuration>
    """)
ACCESS_ONLY = textwrap.dedent("""\
    <Configuration>
      <Loggers>
        <Logger name="ACCESS_LOG" level="info"/>
        <Root level="warn"/>
      </Loggers>
    </Configuration>
    """)
QUIET_FILES = ["access_log.log", "model_log.log", "ts_metrics.log", "model_metrics.log"]


@pytest.fixture(scope="module")
def quiet_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("quiet-store")
    handler_archive(tmp_path_factory.mktemp("quiet-src"), store, "quiet", HANDLER, {})
    return store


@pytest.fixture(autouse=True)
def _logs_in_the_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOG_LOCATION", "METRICS_LOCATION"):
        monkeypatch.delenv(name, raising=False)


def predict_twice(inference: str) -> None:
    assert httpx.post(f"{inference}/predictions/quiet", json=[1]).status_code == 200
    assert httpx.post(f"{inference}/predictions/nope", json=[1]).status_code == 404


def test_vmargs_log4j_file_at_warn_writes_no_line_per_request(quiet_store, tmp_path):
    log4j = tmp_path / "log4j2.xml"
    log4j.write_text(QUIET)
    props = tmp_path / "config.properties"
    props.write_text("disable_token_authorization=true\n"
                     f"vmargs=-Xmx1g -Dlog4j.configurationFile=file://{log4j}\n")
    srv = Server(tmp_path, quiet_store, ["quiet.mar"], extra_config={"worker_start": "spawn"},
                 extra_args=["--ts-config", str(props)]).start()
    try:
        predict_twice(srv.inference)
    finally:
        assert not srv.stop()  # every line that would be written has been, and flushed
    logs = tmp_path / "logs"
    for name in QUIET_FILES:
        assert (logs / name).read_text() == "", name
    ts_log = (logs / "ts_log.log").read_text()  # the files are there; WARN lines still go
    assert "[WARN ] MainThread modelserve - token authorization is disabled" in ts_log
    assert "quiet handler ran" not in ts_log and "Requests2XX" not in ts_log


def test_log_config_flag_wins_over_vmargs(quiet_store, tmp_path):
    quiet, access = tmp_path / "quiet.xml", tmp_path / "access.xml"
    quiet.write_text(QUIET)
    access.write_text(ACCESS_ONLY)
    ports = [free_port() for _ in range(3)]
    props = tmp_path / "config.properties"
    props.write_text(f"inference_address=http://127.0.0.1:{ports[0]}\n"
                     f"management_address=http://127.0.0.1:{ports[1]}\n"
                     f"metrics_address=http://127.0.0.1:{ports[2]}\n"
                     "disable_token_authorization=true\n"
                     f"vmargs=-Dlog4j.configurationFile=file://{quiet}\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MODELSERVE_", "TS_"))},
           "TMPDIR": str(tmp_path), "MODELSERVE_GRPC_INFERENCE_PORT": "0",
           "MODELSERVE_GRPC_TORCHSERVE_INFERENCE_PORT": "0",
           "MODELSERVE_GRPC_TORCHSERVE_MANAGEMENT_PORT": "0"}
    with open(tmp_path / "out.txt", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelserve", "torchserve", "--start", "--foreground",
             "--ncs", "--model-store", str(quiet_store), "--models", "quiet=quiet.mar",
             "--ts-config", str(props), "--log-config", str(access)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    inference = f"http://127.0.0.1:{ports[0]}"

    def ready() -> bool:
        try:
            return httpx.get(f"{inference}/ping", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=120)
        predict_twice(inference)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    logs = tmp_path / "logs"
    access_lines = (logs / "access_log.log").read_text().splitlines()
    requests = [line.split('"')[1] for line in access_lines]  # the readiness pings too
    assert [r for r in requests if r != "GET /ping HTTP/1.1"] == [
        "POST /predictions/quiet HTTP/1.1", "POST /predictions/nope HTTP/1.1"]
    for name in ("model_log.log", "ts_metrics.log", "model_metrics.log"):
        assert (logs / name).read_text() == "", name
