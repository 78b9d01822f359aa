"""The management API under the TorchServe personality answers as TorchServe 0.12's frontend.

Every case is a request from TorchServe's own management test data (test/postman) or its
ModelServerTest, sent over real HTTP to `modelserve start --ts-config config.properties`
(`disable_token_authorization=true`, `enable_model_api=true`, as TorchServe's tests run it),
with archives built by torch-model-archiver 0.12. The comment on each case names the
TorchServe source it follows (frontend/server/src/main/java/org/pytorch/serve/...). Where
modelserve answers otherwise on purpose, the test says so and README's Differences has the row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, free_port, pid_alive, wait_for

ARCHIVER = [sys.executable, "-m", "model_archiver.model_packaging"]

# TorchServe's custom-service shape: a module-level handle(data, context)
NOOP_HANDLER = textwrap.dedent('''
    def handle(data, context):
        if data is None:  # TorchServe calls it once with None at load
            return None
        return [{"ok": True} for _ in data]
''')

ZERO_WORKERS = ('Model "{name}" Version: 1.0 registered with 0 initial workers. '
                "Use scale workers API to add workers for the model.")


@pytest.fixture(scope="module")
def ts_archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """noop.mar and noop2.mar, by torch-model-archiver 0.12 (no model file: the handler is
    the model, like TorchServe's noop test archives)."""
    src = tmp_path_factory.mktemp("ts-sem-src")
    store = tmp_path_factory.mktemp("ts-sem-store")
    (src / "noop_handler.py").write_text(NOOP_HANDLER)
    for name in ("noop", "noop2"):
        subprocess.run([*ARCHIVER, "--model-name", name, "--version", "1.0", "--handler",
                        str(src / "noop_handler.py"), "--export-path", str(store)],
                       check=True, capture_output=True)
    return store


def ts_properties(path: Path, **extra: str) -> Path:
    """What TorchServe's tests put in config.properties (no addresses: the fixture's
    config.yaml has the free ports, and keys read from here would beat it)."""
    keys = {"disable_token_authorization": "true", "enable_model_api": "true", **extra}
    path.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
    return path


@pytest.fixture(scope="module")
def ts_server(ts_archives: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ts-sem-server")
    props = ts_properties(root / "config.properties",
                          allowed_urls="http://127\\\\.0\\\\.0\\\\.1:.*")
    srv = Server(root, ts_archives, [], extra_args=["--ts-config", str(props)])
    srv.start()
    yield srv
    assert not srv.stop()


def mgmt(srv: Server, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, f"{srv.management}{path}", timeout=60, **kw)


def unregister_all(srv: Server) -> None:
    for model in mgmt(srv, "GET", "/models").json()["models"]:
        for desc in mgmt(srv, "GET", f"/models/{model['modelName']}/all").json():
            if not desc.get("default"):  # others first: the default goes last (403 before)
                mgmt(srv, "DELETE", f"/models/{model['modelName']}/{desc['modelVersion']}")
        mgmt(srv, "DELETE", f"/models/{model['modelName']}")


@pytest.fixture
def clean(ts_server: Server) -> Iterator[Server]:
    yield ts_server
    unregister_all(ts_server)


# -- query values: NettyUtils.getIntParameter / Boolean.parseBoolean ------------------------
@pytest.mark.parametrize("query", [
    "limit=&next_page_token=",          # empty = absent (getParameter gives "", parseInt fails)
    "limit=1&next_page_token=-1",       # ApiUtils.getModelList: a negative token is 0
    "limit=dd&next_page_token=x",       # unparsable: the defaults, 100 and 0
    "limit=101",                        # over 100: 100
])
def test_list_takes_what_torchserve_takes(clean: Server, query: str):
    assert mgmt(clean, "POST", "/models?url=noop.mar").status_code == 200
    r = mgmt(clean, "GET", f"/models?{query}")
    assert r.status_code == 200, r.text
    assert r.json()["models"] == [{"modelName": "noop", "modelUrl": "noop.mar"}]


def test_list_pages_as_torchserve_does(clean: Server):
    """ApiUtils.getModelList: a page that ends at the last model still carries
    nextPageToken; a token past the end is an empty page; limit=0 an empty one."""
    for name in ("noop", "noop2"):
        assert mgmt(clean, "POST", f"/models?url={name}.mar").status_code == 200
    assert mgmt(clean, "GET", "/models?limit=1").json() == {
        "models": [{"modelName": "noop", "modelUrl": "noop.mar"}], "nextPageToken": "1"}
    assert mgmt(clean, "GET", "/models?limit=1&next_page_token=1").json() == {
        "models": [{"modelName": "noop2", "modelUrl": "noop2.mar"}], "nextPageToken": "2"}
    assert mgmt(clean, "GET", "/models?next_page_token=12").json() == {"models": []}
    assert mgmt(clean, "GET", "/models?limit=0").json() == {"models": [], "nextPageToken": "0"}


# -- registration: ApiUtils.handleRegister, RegisterModelRequest ----------------------------
@pytest.mark.parametrize("query", [
    "",                                  # initial_workers defaults to 0 (ConfigManager)
    "&synchronous=false",                # nothing to wait for: 200, not 202
    "&synchronous=-1", "&synchronous=Nan",
    "&initial_workers=-1",               # <= 0: no worker (ApiUtils.handleRegister)
    "&initial_workers=nan",              # unparsable: the default, 0
    "&startup_timeout=0", "&startup_timeout=",
    "&batch_size=dd&max_batch_delay=j",  # unparsable: the sentinels, then the defaults
    "&handler=invalidHandler",           # no worker starts, so nothing fails yet
    "&handler=serve/ts/torch_handler/image_classifier",
])
def test_registration_without_workers_is_200(clean: Server, query: str):
    r = mgmt(clean, "POST", f"/models?url=noop.mar{query}")
    assert (r.status_code, r.json()) == (200, {"status": ZERO_WORKERS.format(name="noop")})
    [desc] = mgmt(clean, "GET", "/models/noop").json()
    assert desc["minWorkers"] == 0 and desc["workers"] == []
    assert (desc["batchSize"], desc["maxBatchDelay"]) == (1, 100)


def test_registration_with_workers_waits_by_default(clean: Server):
    """synchronous defaults to true (RegisterModelRequest), initial_workers starts them."""
    r = mgmt(clean, "POST", "/models?url=noop.mar&initial_workers=1")
    assert (r.status_code, r.json()) == (
        200, {"status": 'Model "noop" Version: 1.0 registered with 1 initial workers'})
    assert httpx.post(f"{clean.inference}/predictions/noop", json={}).json() == {"ok": True}


def test_url_missing_is_400_and_empty_is_404(clean: Server):
    r = mgmt(clean, "POST", "/models")  # ApiUtils.registerModel: "Parameter url is required."
    assert (r.status_code, r.json()["message"]) == (400, "Parameter url is required.")
    r = mgmt(clean, "POST", "/models?url=")  # ModelArchive.downloadModel: "empty url", 404
    assert (r.status_code, r.json()["type"]) == (404, "ModelNotFoundException")


# -- never a 500 for the client's mistake ---------------------------------------------------
@pytest.mark.parametrize("handler", ["invalidHandler", "missing_file.py",
                                     "noop_handler:nothing_here"])
def test_a_handler_that_is_not_there_is_400_when_workers_start(clean: Server, handler: str):
    """TorchServe answers 500 "Failed to start workers" (ApiUtils.updateModelWorkers): the
    client named a handler the archive does not have, so modelserve answers 400 with the
    reason (README, Differences). The registration is undone, as in TorchServe."""
    r = mgmt(clean, "POST", f"/models?url=noop.mar&initial_workers=1&handler={handler}")
    assert r.status_code == 400, r.text
    assert "Failed to start workers" in r.json()["message"] and "handler" in r.json()["message"]
    assert mgmt(clean, "GET", "/models/noop").status_code == 404


def test_scaling_up_a_bad_handler_is_400(clean: Server):
    """Postman "Scale ... invalid handler" (TorchServe: 500): registered without workers,
    then scaled synchronously."""
    assert mgmt(clean, "POST", "/models?url=noop.mar&handler=invalidHandler").status_code == 200
    r = mgmt(clean, "PUT", "/models/noop?min_worker=1&synchronous=true")
    assert r.status_code == 400, r.text
    assert "invalidHandler" in r.json()["message"]


def test_a_download_that_fails_is_400(clean: Server):
    """ArchiveUtils.downloadArchive: DownloadArchiveException, 400."""
    port = free_port()  # nothing listens there
    r = mgmt(clean, "POST", f"/models?url=http://127.0.0.1:{port}/absent.mar")
    assert r.status_code == 400, r.text
    assert "Failed to download archive" in r.json()["message"]


# -- scale: ManagementRequestHandler.handleScaleModel, ApiUtils.updateModelWorkers ----------
@pytest.mark.parametrize("query", ["min_worker=nan", "min_worker=1&synchronous=Nan",
                                   "min_worker=&max_worker=", "min_worker=1&timeout=true",
                                   "min_worker=1&number_gpu=7"])
def test_scale_takes_what_torchserve_takes(clean: Server, query: str):
    """Unparsable min_worker: 1; synchronous only for "true"; timeout and number_gpu are not
    read at all. Asynchronous: 202 "Processing worker updates..."."""
    assert mgmt(clean, "POST", "/models?url=noop.mar").status_code == 200
    r = mgmt(clean, "PUT", f"/models/noop?{query}")
    assert (r.status_code, r.json()) == (202, {"status": "Processing worker updates..."})
    wait_for(lambda: [w for w in mgmt(clean, "GET", "/models/noop").json()[0]["workers"]
                      if w["status"] == "READY"])


def test_scale_bounds_are_checked_before_the_model(clean: Server):
    """ApiUtils.updateModelWorkers checks max < min before it looks the model up."""
    r = mgmt(clean, "PUT", "/models/nosuchmodel?min_worker=2&max_worker=1")
    assert (r.status_code, r.json()["message"]) == (
        400, "max_worker cannot be less than min_worker.")
    r = mgmt(clean, "PUT", "/models/nosuchmodel?max_worker=-1")  # min defaults to 1
    assert r.status_code == 400
    assert mgmt(clean, "PUT", "/models/nosuchmodel").status_code == 404


def test_negative_min_worker_is_400(clean: Server):
    """TorchServe answers 500 (IndexOutOfBoundsException in WorkLoadManager.modelChanged)
    and kills every worker: modelserve refuses it (README, Differences)."""
    assert mgmt(clean, "POST", "/models?url=noop.mar").status_code == 200
    r = mgmt(clean, "PUT", "/models/noop?min_worker=-1&max_worker=-1")
    assert (r.status_code, r.json()["message"]) == (400, "min_worker cannot be negative.")


def test_scale_reads_model_version_from_the_query(clean: Server):
    """handleScaleModel: ``model_version`` in the query when the path has none."""
    assert mgmt(clean, "POST", "/models?url=noop.mar").status_code == 200
    r = mgmt(clean, "PUT", "/models/noop?min_worker=0&synchronous=true&model_version=1.0")
    assert (r.status_code, r.json()) == (
        200, {"status": "Workers scaled to 0 for model: noop, version: 1.0"})
    assert mgmt(clean, "PUT", "/models/noop?model_version=9.9").status_code == 404


# -- the native personality keeps its strictness -------------------------------------------
@pytest.mark.parametrize("extra_config,strict", [({}, True), ({"strict_params": False}, False)])
def test_native_mode_is_strict_unless_asked(ts_archives: Path, tmp_path: Path,
                                            extra_config: dict, strict: bool):
    srv = Server(tmp_path, ts_archives, [], extra_config=extra_config).start()
    try:
        r = mgmt(srv, "GET", "/models?limit=")
        assert r.status_code == (400 if strict else 200), r.text
        # lenient: "Nan" is false, and the native default starts a worker: 202
        r = mgmt(srv, "POST", "/models?url=noop.mar&synchronous=Nan")
        assert r.status_code == (400 if strict else 202), r.text
    finally:
        assert not srv.stop()


def test_strict_params_in_config_yaml_beats_the_personality(ts_archives: Path, tmp_path: Path):
    props = ts_properties(tmp_path / "config.properties")
    srv = Server(tmp_path, ts_archives, [], extra_config={"strict_params": True},
                 extra_args=["--ts-config", str(props)]).start()
    try:
        assert mgmt(srv, "GET", "/models?limit=").status_code == 400
        # the other TorchServe default stays: no workers at registration
        r = mgmt(srv, "POST", "/models?url=noop.mar")
        assert r.json() == {"status": ZERO_WORKERS.format(name="noop")}
    finally:
        assert not srv.stop()


def test_default_workers_per_model_is_honoured(ts_archives: Path, tmp_path: Path):
    """ConfigManager.getConfiguredDefaultWorkersPerModel: set, it is what POST /models
    starts."""
    props = ts_properties(tmp_path / "config.properties", default_workers_per_model="1")
    srv = Server(tmp_path, ts_archives, [], extra_args=["--ts-config", str(props)]).start()
    try:
        r = mgmt(srv, "POST", "/models?url=noop.mar")
        assert r.json() == {"status": 'Model "noop" Version: 1.0 registered with 1 initial '
                                      "workers"}
    finally:
        assert not srv.stop()


# -- the command line: ts/arg_parser.py, ts/model_server.py ---------------------------------
@pytest.mark.parametrize("words", [["a=noop.mar", "b=noop2.mar"], ["a=noop.mar,b=noop2.mar"],
                                   ["a=noop.mar,", "b=noop2.mar"]])
def test_models_take_torchserve_space_or_comma_separated_list(ts_archives: Path,
                                                              tmp_path: Path, words: list[str]):
    """ConfigManager joins the --models words with commas into load_models, which
    ModelServer splits on commas (test_torch_compile.py starts with --models a.mar,b.mar)."""
    srv = Server(tmp_path, ts_archives, [], extra_args=["--models", *words, "--ncs"]).start()
    try:
        names = [m["modelName"] for m in mgmt(srv, "GET", "/models").json()["models"]]
        assert names == ["a", "b"]
        assert not (tmp_path / "work" / "state" / "models.json").exists()  # --ncs
    finally:
        assert not srv.stop()


def test_torchserve_start_and_stop(ts_archives: Path, tmp_path: Path):
    """`modelserve torchserve --start` runs the server in the background with TorchServe's
    pid file; a second --start is refused; --stop stops it and removes the key file, as
    `torchserve --stop` does."""
    ports = {k: free_port() for k in ("inference", "management", "metrics")}
    props = tmp_path / "config.properties"
    props.write_text(
        f"inference_address=http://127.0.0.1:{ports['inference']}\n"
        f"management_address=http://127.0.0.1:{ports['management']}\n"
        f"metrics_address=http://127.0.0.1:{ports['metrics']}\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MODELSERVE_", "TS_"))},
           "TMPDIR": str(tmp_path), "MODELSERVE_GRPC_INFERENCE_PORT": "0",
           # TorchServe's gRPC APIs: not on 7070/7071, which other servers may hold
           "MODELSERVE_GRPC_TORCHSERVE_INFERENCE_PORT": "0",
           "MODELSERVE_GRPC_TORCHSERVE_MANAGEMENT_PORT": "0"}
    pid_file = tmp_path / ".model_server.pid"

    def torchserve(*args: str) -> subprocess.CompletedProcess[str]:
        """Its output in a file: the server started in the background keeps it open."""
        out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}.txt"
        with open(out, "w") as sink:
            done = subprocess.run([sys.executable, "-m", "modelserve", "torchserve", *args],
                                  cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                  text=True, timeout=120)
        done.stdout = out.read_text()
        return done

    started = torchserve("--start", "--ncs", "--model-store", str(ts_archives), "--models",
                         "noop=noop.mar", "noop2.mar", "--ts-config", str(props))
    pid = None
    try:
        assert started.returncode == 0, started.stdout
        pid = int(pid_file.read_text())
        inference = f"http://127.0.0.1:{ports['inference']}"

        def ready() -> bool:
            try:
                return httpx.get(f"{inference}/ping", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=120)
        assert (tmp_path / "key_file.json").is_file()  # token auth is on by default
        again = torchserve("--start", "--model-store", str(ts_archives))
        assert again.returncode == 1 and "already running" in again.stdout
        stopped = torchserve("--stop")
        assert (stopped.returncode, stopped.stdout) == (0, "TorchServe has stopped.\n")
        assert not pid_alive(pid) and not pid_file.exists()
        assert not (tmp_path / "key_file.json").exists()
        assert torchserve("--stop").stdout == "TorchServe is not currently running.\n"
    finally:  # whatever failed, the server it started is stopped
        if pid is None and pid_file.exists():
            pid = int(pid_file.read_text())
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not pid_alive(pid), timeout=60)


def test_torchserve_refuses_what_torchserve_refuses(tmp_path: Path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("TS_CONFIG_FILE", None)

    def torchserve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelserve", "torchserve", *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60)

    assert torchserve("--start").stdout == "Missing mandatory parameter --model-store\n"
    r = torchserve("--start", "--model-store", str(tmp_path / "nope"))
    assert (r.returncode, r.stdout) == (1, f"--model-store directory not found: "
                                           f"{tmp_path / 'nope'}\n")
    r = torchserve("--start", "--ts-config", "missing.properties")
    assert (r.returncode, r.stdout) == (1, "--ts-config file not found: missing.properties\n")
    assert not (tmp_path / ".model_server.pid").exists()
