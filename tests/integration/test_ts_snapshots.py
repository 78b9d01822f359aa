"""TorchServe's config snapshots over real servers and restarts (TorchServe 0.12's
test/pytest/test_snapshot.py, SnapshotManager.java, FSSnapshotSerializer.java,
ConfigManager.java), and archives that are symbolic links in the model store (its
ts_scripts/marsgen.py links every .mar into the store)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest

from modelserve.archive import create_archive
from tests.conftest import ECHO_HANDLER, Server, wait_for, wait_logged


@pytest.fixture(scope="module")
def linked_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """echo 1.0 (echo_v1.mar) and echo 2.0 (echo_v2.mar), no torch: they load fast. Both are
    symbolic links to archives outside the store, as marsgen.gen_mar makes them."""
    store = tmp_path_factory.mktemp("ts-snap-store")
    src = tmp_path_factory.mktemp("ts-snap-src")
    handler = src / "echo_handler.py"
    handler.write_text(ECHO_HANDLER)
    for version in ("1.0", "2.0"):
        out = src / version
        out.mkdir()
        path = create_archive(model_name="echo", version=version, handler=str(handler),
                              export_path=out)
        os.symlink(path, store / f"echo_v{version[0]}.mar")
    return store


@pytest.fixture
def logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LOG_LOCATION for every server of the test: the snapshots go to its config/."""
    monkeypatch.setenv("LOG_LOCATION", str(tmp_path / "logs"))
    return tmp_path / "logs" / "config"


def ts_properties(path: Path, **extra: str) -> Path:
    """TorchServe's test config (test_utils.start_torchserve): token auth off, model API on;
    no addresses (the fixture's config.yaml holds the free ports)."""
    keys = {"disable_token_authorization": "true", "enable_model_api": "true", **extra}
    path.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
    return path


def mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def cfgs(logs: Path, pattern: str = "*.cfg") -> list[Path]:
    return sorted(logs.glob(pattern))


def model_snapshot(path: Path) -> dict:
    """The model_snapshot line, read as test_snapshot.py's test_empty_runtime reads it."""
    [line] = [ln for ln in path.read_text().split("\n") if ln.startswith("model_snapshot=")]
    return json.loads(line[len("model_snapshot="):].replace("\\:", ":").replace("\\n", ""))


def mgmt(srv: Server, method: str, path: str, **params: str | int) -> httpx.Response:
    return httpx.request(method, f"{srv.management}{path}", params=params, timeout=60)


def versions(srv: Server, name: str) -> dict[str, dict]:
    r = mgmt(srv, "GET", f"/models/{name}/all")
    assert r.status_code == 200, r.text
    return {d["modelVersion"]: d for d in r.json()}


def names(srv: Server) -> list[str]:
    return [m["modelName"] for m in mgmt(srv, "GET", "/models").json()["models"]]


def ready_workers(srv: Server, name: str, version: str) -> int:
    return len([w for w in versions(srv, name)[version]["workers"] if w["status"] == "READY"])


def test_snapshots_on_every_change_and_the_latest_restored(linked_store, tmp_path, logs):
    """test_snapshot.py test_snapshot_created_on_start_and_stop,
    test_snapshot_created_on_management_api_invoke and test_start_from_latest: a startup, a
    snapshot per management change (ApiUtils, WorkLoadManager.modelChanged) and a shutdown
    file; started again without a config file, TorchServe reads the latest one
    (ConfigManager: getLastSnapshot), its keys and its models; with a config file, not."""
    props = ts_properties(tmp_path / "config.properties", load_models="echo_v1.mar")
    srv = Server(mkdir(tmp_path / "a"), linked_store, [], extra_args=["--ts-config", str(props)])
    srv.start()
    try:
        [startup] = wait_for(lambda: cfgs(logs, "*-startup.cfg"))
        assert re.fullmatch(r"\d{17}-startup\.cfg", startup.name)
        assert model_snapshot(startup)["models"]["echo"]["1.0"]["marName"] == "echo_v1.mar"
        changes = [("POST", "/models", {"url": "echo_v2.mar", "initial_workers": 1}),
                   ("PUT", "/models/echo/2.0/set-default", {}),
                   ("PUT", "/models/echo/2.0", {"min_worker": 2, "synchronous": "true"}),
                   ("POST", "/models", {"url": "echo_v1.mar", "model_name": "other"}),
                   ("DELETE", "/models/other", {})]
        for count, (method, path, params) in enumerate(changes, 1):
            r = mgmt(srv, method, path, **params)
            assert r.status_code == 200, r.text
            wait_for(lambda n=count: len(cfgs(logs, "*-snapshot.cfg")) == n)
        assert not cfgs(logs, "*shutdown.cfg")
    finally:
        assert not srv.stop()
    [shutdown] = cfgs(logs, "*-shutdown.cfg")
    assert len(cfgs(logs)) == 7 and cfgs(logs)[-1] == shutdown
    snapshot = model_snapshot(shutdown)
    assert (snapshot["name"], snapshot["modelCount"]) == (shutdown.name, 2)
    echo = snapshot["models"]["echo"]
    assert {v: (s["defaultVersion"], s["marName"], s["minWorkers"]) for v, s in echo.items()} \
        == {"1.0": (False, "echo_v1.mar", 1), "2.0": (True, "echo_v2.mar", 2)}
    text = shutdown.read_text()
    assert f"tsConfigFile={props}".replace(":", "\\:") in text
    assert "enable_model_api=true" in text and "load_models=echo_v1.mar" in text

    # no config file: the latest snapshot is the config (its enable_model_api=true too)
    again = Server(mkdir(tmp_path / "b"), linked_store, [],
                   extra_args=["--personality", "torchserve"])
    again.start()
    try:
        wait_logged(again, "starting from the latest TorchServe snapshot", shutdown.name)
        assert names(again) == ["echo"]
        restored = versions(again, "echo")
        assert set(restored) == {"1.0", "2.0"}
        assert mgmt(again, "GET", "/models/echo").json()[0]["modelVersion"] == "2.0"
        assert restored["2.0"]["minWorkers"] == 2 and ready_workers(again, "echo", "2.0") == 2
        assert ready_workers(again, "echo", "1.0") == 1
        r = mgmt(again, "POST", "/models", url="echo_v1.mar", model_name="more")
        assert r.status_code == 200, r.text
    finally:
        assert not again.stop()
    assert len(cfgs(logs, "*-startup.cfg")) == 2
    assert "more" in model_snapshot(cfgs(logs)[-1])["models"]

    # a config.properties without model_snapshot: its load_models, no snapshot restored
    third = Server(mkdir(tmp_path / "c"), linked_store, [], extra_args=["--ts-config", str(props)])
    third.start()
    try:
        assert names(third) == ["echo"] and set(versions(third, "echo")) == {"1.0"}
    finally:
        assert not third.stop()


def test_ncs_writes_and_restores_nothing(linked_store, tmp_path, logs):
    """test_snapshot.py test_no_config_snapshots_cli_option: with --ncs no file is written,
    and the latest snapshot is not read (ConfigManager.getLastSnapshot)."""
    logs.mkdir(parents=True)
    earlier = logs / "20200101000000000-snapshot.cfg"
    earlier.write_text('model_snapshot={"modelCount": 1, "models": {"echo": {"2.0": '
                       '{"marName": "echo_v2.mar", "minWorkers": 1, "defaultVersion": true}}}}\n')
    srv = Server(tmp_path, linked_store, [], extra_args=[
        "--personality", "torchserve", "--ncs", "--enable-model-api"])
    srv.start()
    try:
        assert names(srv) == []
        r = mgmt(srv, "POST", "/models", url="echo_v1.mar", initial_workers=1)
        assert r.status_code == 200, r.text
    finally:
        assert not srv.stop()
    assert cfgs(logs) == [earlier]
    assert not (tmp_path / "work" / "state" / "models.json").exists()


# A snapshot as TorchServe writes it (Properties.store: ':' escaped, the JSON on one line),
# read-only as in test_start_from_read_only_snapshot.
SNAPSHOT = r"""#Saving snapshot
#Tue Mar 31 06:24:29 UTC 2020
disable_token_authorization=true
enable_model_api=true
load_models=other\=echo_v1.mar
model_snapshot={\n  "name"\: "20200331062429525-snapshot.cfg",\n  "modelCount"\: 3,\n  "created"\: 1585635869526,\n  "models"\: {\n    "echo"\: {\n      "1.0"\: {\n        "defaultVersion"\: false,\n        "marName"\: "echo_v1.mar",\n        "minWorkers"\: 1,\n        "maxWorkers"\: 1,\n        "batchSize"\: 1,\n        "maxBatchDelay"\: 100,\n        "responseTimeout"\: 120,\n        "startupTimeout"\: 120,\n        "runtimeType"\: "python"\n      },\n      "2.0"\: {\n        "defaultVersion"\: true,\n        "marName"\: "echo_v2.mar",\n        "minWorkers"\: 2,\n        "maxWorkers"\: 3,\n        "batchSize"\: 4,\n        "maxBatchDelay"\: 50,\n        "responseTimeout"\: 60,\n        "startupTimeout"\: 90\n      }\n    },\n    "noop"\: {\n      "1.0"\: {\n        "defaultVersion"\: true,\n        "marName"\: "MISSING",\n        "minWorkers"\: 0,\n        "maxWorkers"\: 0,\n        "batchSize"\: 1,\n        "maxBatchDelay"\: 100\n      }\n    }\n  }\n}
tsConfigFile=config.properties
"""  # noqa: E501


def test_a_snapshot_given_as_ts_config(linked_store, tmp_path, logs):
    """test_snapshot.py test_start_from_snapshot and test_start_from_read_only_snapshot:
    --ts-config naming a snapshot registers its models (SnapshotManager.restore,
    ModelManager.registerAndUpdateModel): each version with its workers, batching, timeouts
    and default, under the snapshot's model name; its load_models is not read."""
    path = tmp_path / "20200331062429525-snapshot.cfg"
    path.write_text(SNAPSHOT.replace("MISSING", "echo_v1.mar"))
    path.chmod(0o444)
    srv = Server(tmp_path, linked_store, [], extra_args=["--ts-config", str(path)])
    srv.start()
    try:
        assert names(srv) == ["echo", "noop"]  # not "other", its load_models
        echo = versions(srv, "echo")
        assert mgmt(srv, "GET", "/models/echo").json()[0]["modelVersion"] == "2.0"
        v2 = echo["2.0"]
        assert (v2["minWorkers"], v2["maxWorkers"], v2["batchSize"], v2["maxBatchDelay"],
                v2["responseTimeout"], v2["startupTimeout"]) == (2, 3, 4, 50, 60, 90)
        assert ready_workers(srv, "echo", "2.0") == 2 and ready_workers(srv, "echo", "1.0") == 1
        assert versions(srv, "noop")["1.0"]["minWorkers"] == 0
        r = httpx.post(f"{srv.inference}/predictions/echo", json={"x": 1}, timeout=30)
        assert r.status_code == 200 and r.json()["echo"] == {"x": 1}
        [startup] = wait_for(lambda: cfgs(logs, "*-startup.cfg"))
        assert f"tsConfigFile={path}".replace(":", "\\:") in startup.read_text()
        assert model_snapshot(startup)["modelCount"] == 3
    finally:
        assert not srv.stop()


def test_a_snapshot_naming_a_missing_archive_stops_the_start(linked_store, tmp_path, logs):
    """test_snapshot.py test_restart_torchserve_with_last_snapshot_with_model_mar_removed:
    SnapshotManager.validate refuses to start without an archive the snapshot names."""
    path = tmp_path / "snapshot.cfg"
    path.write_text(SNAPSHOT.replace("MISSING", "gone.mar"))
    srv = Server(tmp_path, linked_store, [], extra_args=["--ts-config", str(path)])
    with pytest.raises(RuntimeError, match="server exited early"):
        srv.start()
    assert "Model archive file for model :noop, version :1.0 not found in model store" \
        in srv.log()
    assert srv.proc is not None and srv.proc.wait() == 2
    assert not logs.exists()


def test_native_mode_keeps_models_json(linked_store, tmp_path, logs):
    """modelserve's own personality: models.json under the state directory, no .cfg files,
    and an archive linked into the store registers (the operator's link is followed)."""
    srv = Server(tmp_path, linked_store, ["echo_v1.mar"])
    srv.start()
    try:
        r = mgmt(srv, "POST", "/models", url="echo_v2.mar", model_name="linked")
        assert r.status_code == 200, r.text
        state = tmp_path / "work" / "state" / "models.json"
        saved = wait_for(lambda: state.exists() and json.loads(state.read_text()))
        assert {m["name"] for m in saved["models"]} == {"echo", "linked"}
        # only the operator's link leads out of the store: the client naming its target, or
        # the link through a "..", is judged by where the path really leads
        target = os.readlink(linked_store / "echo_v1.mar")
        for url in (target, f"file://{target}", f"../{linked_store.name}/echo_v1.mar"):
            r = mgmt(srv, "POST", "/models", url=url, model_name="escaped")
            assert r.status_code == 400 and "outside the model store" in r.text, (url, r.text)
    finally:
        assert not srv.stop()
    assert not logs.exists()
