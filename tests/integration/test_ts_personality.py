"""What a TorchServe deployment sees beyond the management API, under `--ts-config`: the model
API's default, handler URL paths, a response timeout's status and TorchServe's recovery log
lines. Each test names the TorchServe source or test it follows."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, wait_for, wait_logged

ARCHIVER = [sys.executable, "-m", "model_archiver.model_packaging"]

# test/pytest/test_url_path.py's handler: answers each request's url_path header
URL_PATH_HANDLER = textwrap.dedent('''
    def handle(data, context):
        if data is None:
            return None
        return [context.get_request_header(i, "url_path") or "" for i in range(len(data))]
''')

# test/pytest/test_auto_recover.py's handler: slower than the response timeout
SLOW_HANDLER = textwrap.dedent('''
    import time

    class Slow:
        def initialize(self, context):
            print("[xxx] Model initialization ... DONE !!")

        def handle(self, data, context):
            time.sleep(float(context.model_yaml_config.get("sleep", 5)))
            return ["done" for _ in data]
''')


# test/pytest/test_handler_traceback_logging.py's handler: initialize fails, nested calls
FAILING_HANDLER = textwrap.dedent('''
    class Failing:
        def initialize(self, context):
            self.call1()

        def call1(self):
            assert False

        def handle(self, data, context):
            return data
''')

# test/pytest/test_startup_timeout.py's handler: loads for longer than startupTimeout
SLOW_LOAD_HANDLER = textwrap.dedent('''
    import time

    class SlowLoad:
        def initialize(self, context):
            time.sleep(10)

        def handle(self, data, context):
            return data
''')


def archive(src: Path, store: Path, name: str, handler: str, config: str = "") -> None:
    folder = src / name
    folder.mkdir()
    (folder / "handler.py").write_text(handler)
    extra = []
    if config:
        (folder / "model-config.yaml").write_text(config)
        extra = ["--config-file", str(folder / "model-config.yaml")]
    subprocess.run([*ARCHIVER, "--model-name", name, "--version", "1.0", "--handler",
                    str(folder / "handler.py"), "--export-path", str(store), *extra],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def ts_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("ts-pers-src")
    store = tmp_path_factory.mktemp("ts-pers-store")
    archive(src, store, "paths", URL_PATH_HANDLER, "batchSize: 2\nmaxBatchDelay: 200\n")
    archive(src, store, "slow", SLOW_HANDLER, "sleep: 5\n")
    archive(src, store, "failing", FAILING_HANDLER)
    archive(src, store, "slowload", SLOW_LOAD_HANDLER, "startupTimeout: 2\n")
    return store


@pytest.fixture(scope="module")
def ts_server(ts_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """TorchServe's defaults: no enable_model_api in the file, default_response_timeout=2
    (test_auto_recover.py's config.properties)."""
    root = tmp_path_factory.mktemp("ts-pers-server")
    props = root / "config.properties"
    props.write_text("disable_token_authorization=true\ndefault_response_timeout=2\n")
    srv = Server(root, ts_store, ["paths.mar", "slow.mar"],
                 extra_args=["--ts-config", str(props)])
    srv.start()
    yield srv
    assert not srv.stop()


def test_model_api_is_off_by_default(ts_server: Server):
    """ConfigManager.isModelApiEnabled defaults to false; test_model_control_mode.py asserts
    this body word for word. Scale, describe and list still work."""
    body = {"code": 405, "type": "MethodNotAllowedException",
            "message": "Requested method is not allowed, please refer to API document."}
    r = httpx.post(f"{ts_server.management}/models", params={"url": "paths.mar"})
    assert (r.status_code, r.json()) == (405, body)
    r = httpx.delete(f"{ts_server.management}/models/paths")
    assert (r.status_code, r.json()) == (405, body)
    assert httpx.get(f"{ts_server.management}/models/paths").status_code == 200


@pytest.mark.parametrize("path", ["v1/chat/completion", "v1/completion"])
def test_the_rest_of_the_path_is_the_handlers_url_path(ts_server: Server, path: str):
    """InferenceRequestHandler.handlePredictions: /predictions/{m}/{v}/{any/path} runs the
    model with the rest as the url_path header (test_url_path.py)."""
    r = httpx.post(f"{ts_server.inference}/predictions/paths/1.0/{path}",
                   json={"prompt": "Hello world"})
    assert (r.status_code, r.text) == (200, path)
    r = httpx.post(f"{ts_server.inference}/predictions/paths/1.0", json={})
    assert (r.status_code, r.text) == (200, "")


def test_a_timed_out_request_is_500_and_the_worker_recovers(ts_server: Server):
    """WorkerThread: a batch past default_response_timeout is "Worker died." (500); the
    worker is restarted and TorchServe's recovery lines are logged (test_auto_recover.py)."""
    r = httpx.post(f"{ts_server.inference}/predictions/slow", json=42, timeout=60)
    assert r.status_code == 500, r.text
    assert "response_timeout" in r.json()["message"]
    wait_logged(ts_server, "Model initialization ... DONE",
                "Number or consecutive unsuccessful inference 1", "Worker disconnected",
                "Retry worker", "Auto recovery start timestamp",
                "Auto recovery succeeded, reset recoveryStartTS", timeout=60)
    assert "Auto recovery failed again" not in ts_server.log()
    wait_for(lambda: [w for w in httpx.get(f"{ts_server.management}/models/slow").json()[0]
                      ["workers"] if w["status"] == "READY"], timeout=60)


def test_native_mode_keeps_504(ts_store: Path, tmp_path: Path):
    srv = Server(tmp_path, ts_store, ["slow.mar"],
                 extra_config={"response_timeout": 2}).start()
    try:
        r = httpx.post(f"{srv.inference}/predictions/slow", json=42, timeout=60)
        assert (r.status_code, r.json()["type"]) == (504, "RequestTimeoutException")
    finally:
        assert not srv.stop()


def test_bad_keys_are_400_and_keys_expire(ts_store: Path, tmp_path: Path):
    """TokenAuthorizationHandler: a wrong key is an InvalidKeyException, 400; keys expire
    token_expiration_min after they are made (test_token_authorization.py), and the key file
    says when (TokenAuthorization.generateKeyFile's "expiration time")."""
    import json
    import time

    props = tmp_path / "config.properties"
    props.write_text("token_expiration_min=0.05\n")  # 3 seconds
    srv = Server(tmp_path, ts_store, ["paths.mar"], auth=True,
                 extra_args=["--ts-config", str(props)])
    srv.start()
    try:
        keys = json.loads((tmp_path / "key_file.json").read_text())  # in the working directory
        assert keys["inference"]["expiration time"].endswith("Z")
        good = {"Authorization": f"Bearer {keys['inference']['key']}"}
        url = f"{srv.inference}/predictions/paths/1.0/x"
        r = httpx.post(url, json={}, headers={"Authorization": "Bearer wrong"})
        assert (r.status_code, r.json()["type"]) == (400, "InvalidKeyException")
        assert httpx.post(url, json={}, headers=good).status_code == 200
        time.sleep(3.5)  # the expiry is what is tested: nothing to wait for but the clock
        assert httpx.post(url, json={}, headers=good).status_code == 400
    finally:
        assert not srv.stop()


def test_ts_variables_beat_command_line_flags(ts_store: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch):
    """ConfigManager reads TS_* variables (enable_envvars_config=true) after its flags:
    TS_DISABLE_TOKEN_AUTHORIZATION=false beats --disable-token-auth
    (test_token_authorization.py::test_priority_env_cmd)."""
    monkeypatch.setenv("TS_DISABLE_TOKEN_AUTHORIZATION", "false")
    props = tmp_path / "config.properties"
    props.write_text("enable_envvars_config=true\n")
    srv = Server(tmp_path, ts_store, ["paths.mar"], extra_args=["--ts-config", str(props)])
    assert "--disable-token-auth" in srv.start().proc.args  # the flag was given...
    try:
        r = httpx.get(f"{srv.management}/models")
        assert (r.status_code, r.json()["type"]) == (400, "InvalidKeyException")  # ...and lost
        assert (tmp_path / "key_file.json").is_file()
    finally:
        assert not srv.stop()


def test_failed_worker_starts_are_retried_and_logged_as_torchserve(ts_store: Path,
                                                                   tmp_path: Path):
    """test_handler_traceback_logging.py: after an asynchronous registration, a handler whose
    initialize raises is started again and again (WorkerThread: "Retry worker ... in N
    seconds"), its traceback in the log each time, and the frontend's own line does not name
    the exception (BatchAggregator: "Load model failed: NAME, error: Worker died.");
    test_startup_timeout.py: a start past startupTimeout is "Backend worker error" followed
    by TorchServe's WorkerInitializationException line."""
    props = tmp_path / "config.properties"
    props.write_text("enable_model_api=true\n")
    ts_server = Server(tmp_path, ts_store, [], extra_args=["--ts-config", str(props)]).start()
    manage = f"{ts_server.management}/models"
    for name in ("failing", "slowload"):
        r = httpx.post(manage, params={"url": f"{name}.mar", "initial_workers": 1,
                                       "synchronous": "false"})
        assert r.status_code == 202, r.text
    try:
        wait_for(lambda: ts_server.log().count(
            "Load model failed: failing, error: Worker died.") >= 3, timeout=60)
        log = ts_server.log()
        assert log.count("in call1") >= 3 and log.count("AssertionError") >= 3
        assert "Retry worker: failing in 1 seconds." in log
        # each AssertionError line ends one whole traceback (TorchServe's test splits on it)
        frontend = [line for line in log.splitlines() if " modelserve." in line
                    and " modelserve.workers.output:" not in line]
        assert not any("AssertionError" in line for line in frontend)
        wait_logged(ts_server, "Backend worker error", timeout=60)
        lines = ts_server.log().splitlines()
        at = next(i for i, line in enumerate(lines) if line.endswith("Backend worker error"))
        assert lines[at + 1] == ("org.pytorch.serve.wlm.WorkerInitializationException: "
                                 "Backend worker did not respond in given time")
    finally:
        assert not ts_server.stop()
