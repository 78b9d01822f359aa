"""TorchServe's config snapshot files, written and read back without a server; and archives
linked into the model store (fetch.resolve_archive)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelserve.archive.fetch import resolve_archive
from modelserve.config import ModelConfig, Settings
from modelserve.errors import BadRequestError
from modelserve.server.engine.ts_snapshot import (
    TsSnapshots,
    latest_snapshot,
    missing_archives,
    model_states,
    restore_requests,
    snapshot_dir,
)
from modelserve.ts_config import read_ts_config

# A snapshot as TorchServe 0.12 writes one (FSSnapshotSerializer: Properties.store of the config
# with model_snapshot, Gson's pretty JSON on one line with \n and \: escapes).
TS_WRITTEN = (
    "#Saving snapshot\n#Tue Mar 31 06:24:29 UTC 2020\n"
    "default_workers_per_model=4\nmodel_store=store\nenable_model_api=true\n"
    'model_snapshot={\\n  "name"\\: "20200331062429525-snapshot.cfg",\\n  "modelCount"\\: 2,'
    '\\n  "created"\\: 1585635869526,\\n  "models"\\: {\\n    "noop"\\: {\\n      "1.11"\\: '
    '{\\n        "defaultVersion"\\: false,\\n        "marName"\\: "noop.mar",\\n        '
    '"minWorkers"\\: 2,\\n        "maxWorkers"\\: 3,\\n        "batchSize"\\: 4,\\n        '
    '"maxBatchDelay"\\: 50,\\n        "responseTimeout"\\: 60,\\n        "startupTimeout"\\: '
    '90,\\n        "runtimeType"\\: "python"\\n      },\\n      "2.0"\\: {\\n        '
    '"defaultVersion"\\: true,\\n        "marName"\\: "noop_v2.mar",\\n        "minWorkers"\\: '
    '1,\\n        "maxWorkers"\\: 1,\\n        "batchSize"\\: 1,\\n        "maxBatchDelay"\\: '
    '100\\n      }\\n    }\\n  }\\n}\n'
    "tsConfigFile=config.properties\n"
)


def model_snapshot_json(path: Path) -> dict:
    """How TorchServe's test_snapshot.py (test_empty_runtime) reads a snapshot file: the
    model_snapshot line, unescaped by hand."""
    [line] = [ln for ln in path.read_text().split("\n") if ln.startswith("model_snapshot")]
    return json.loads(line[len("model_snapshot="):].replace("\\:", ":").replace("\\n", ""))


def fake_registry() -> SimpleNamespace:
    def version(v: str, url: str, **cfg) -> SimpleNamespace:
        return SimpleNamespace(version=v, url=url, config=ModelConfig(**cfg),
                               archive=SimpleNamespace(manifest=SimpleNamespace(runtime="python")))
    models = {"echo": [version("1.0", "echo_v1.mar", minWorkers=1, maxWorkers=2),
                       version("2.0", "echo_v2.mar", minWorkers=0, batchSize=4,
                               maxBatchDelay=7.5)]}
    return SimpleNamespace(names=lambda: list(models), snapshot_names=lambda: list(models),
                           versions=lambda n: models[n],
                           default_version=lambda n: "2.0")


def test_files_have_torchserves_names_and_format(tmp_path):
    """SnapshotManager.getSnapshotName and FSSnapshotSerializer.saveSnapshot: one file per
    event, <yyyyMMddHHmmssSSS>-<event>.cfg, the config's keys plus model_snapshot."""
    writer = TsSnapshots(tmp_path / "config", {"enable_model_api": "true",
                                               "inference_address": "http://127.0.0.1:8080"})
    paths = [writer.save(event, model_states(fake_registry()))
             for event in ("startup", "snapshot", "snapshot", "shutdown")]
    names = [p.name for p in paths if p is not None]
    assert [re.fullmatch(r"\d{17}-(\w+)\.cfg", n).group(1) for n in names] == [
        "startup", "snapshot", "snapshot", "shutdown"]
    assert names == sorted(names) and len(set(names)) == 4  # same millisecond: the next one
    text = paths[-1].read_text()
    assert text.startswith("#Saving snapshot\n#")
    assert "inference_address=http\\://127.0.0.1\\:8080\n" in text
    snapshot = model_snapshot_json(paths[-1])
    assert (snapshot["name"], snapshot["modelCount"]) == (names[-1], 2)
    assert snapshot["models"]["echo"] == {
        "1.0": {"defaultVersion": False, "marName": "echo_v1.mar", "minWorkers": 1,
                "maxWorkers": 2, "batchSize": 1, "maxBatchDelay": 100, "responseTimeout": 120,
                "startupTimeout": 120, "runtimeType": "python"},
        "2.0": {"defaultVersion": True, "marName": "echo_v2.mar", "minWorkers": 0,
                "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 7.5, "responseTimeout": 120,
                "startupTimeout": 120, "runtimeType": "python"}}
    assert latest_snapshot(tmp_path / "config") == paths[-1]
    # what it wrote reads back as a config: its keys and its models
    config = read_ts_config(paths[-1])
    assert config.settings["enable_model_api"] is True
    assert config.settings["ts_model_snapshot"] == snapshot["models"]


def test_no_shutdown_snapshot_before_the_startup_one(tmp_path):
    writer = TsSnapshots(tmp_path, {})
    assert writer.save("shutdown", {}) is None and not list(tmp_path.iterdir())


def test_latest_is_by_time_stamp_and_odd_names_are_skipped(tmp_path):
    """FSSnapshotSerializer.getLastSnapshot: the latest time stamp, whatever the event."""
    for name in ("20240101000000000-shutdown.cfg", "20240102000000000-startup.cfg",
                 "junk-snapshot.cfg", ".20250101000000000-x.cfg.tmp"):
        (tmp_path / name).write_text("")
    (tmp_path / "20990101000000000-dir").mkdir()
    assert latest_snapshot(tmp_path) == tmp_path / "20240102000000000-startup.cfg"
    assert latest_snapshot(tmp_path / "none") is None


def test_snapshot_dir_follows_log_location(monkeypatch, tmp_path):
    """ConfigManager: LOG_LOCATION, else logs; the snapshots in its config/."""
    monkeypatch.delenv("LOG_LOCATION", raising=False)
    assert snapshot_dir(Settings()) == Path("logs/config")
    monkeypatch.setenv("LOG_LOCATION", str(tmp_path))
    assert snapshot_dir(Settings()) == tmp_path / "config"
    assert snapshot_dir(Settings(ts_snapshot_dir=tmp_path / "x")) == tmp_path / "x"
    assert snapshot_dir(Settings(log_dir=tmp_path / "y")) == tmp_path / "y" / "config"


def test_a_torchserve_snapshot_as_ts_config(tmp_path):
    """SnapshotManager.restore / ModelManager.registerAndUpdateModel: each version's archive
    under the snapshot's model name, with its workers, batching, timeouts and default."""
    path = tmp_path / "20200331062429525-snapshot.cfg"
    path.write_text(TS_WRITTEN)
    config = read_ts_config(path)
    assert config.warnings == ["tsConfigFile: ignored, written by TorchServe into its "
                               "snapshots; informational"]
    settings = Settings(**{**config.settings, "model_store": tmp_path})
    requests = {(e["name"], e["version"]): (r, e) for r, e in restore_requests(settings)}
    req, entry = requests[("noop", "1.11")]
    assert (req.url, req.model_name, req.initial_workers, req.batch_size, req.max_batch_delay,
            req.response_timeout, req.startup_timeout) == ("noop.mar", "noop", 2, 4, 50, 60, 90)
    assert (entry["max_workers"], entry["default"]) == (3, False)
    req, entry = requests[("noop", "2.0")]  # no runtimeType or timeouts: the defaults
    assert (req.url, req.response_timeout, entry["default"]) == ("noop_v2.mar", None, True)
    # SnapshotManager.validate: every archive must be in the model store
    assert len(missing_archives(settings)) == 2
    (tmp_path / "noop.mar").write_text("")
    [missing] = missing_archives(settings)
    assert missing.startswith("Model archive file for model :noop, version :2.0 not found")


@pytest.mark.parametrize("value, message", [
    ("{}", "expected a TorchServe snapshot"),
    ('{"models": {"a": {"1.0": {"minWorkers": 1}}}}', "model 'a' is not"),
    ('{"models": [', "invalid JSON"),
])
def test_a_malformed_model_snapshot_is_refused(tmp_path, value, message):
    path = tmp_path / "config.properties"
    path.write_text(f"model_snapshot={value}\n")
    with pytest.raises(ValueError, match=message):
        read_ts_config(path)


def test_an_empty_snapshot_registers_nothing(tmp_path):
    """SnapshotManager.initModels: modelCount 0 is "Starting TorchServe without initial
    models" (and load_models is not read either)."""
    path = tmp_path / "config.properties"
    path.write_text('model_snapshot={"modelCount": 0, "models": {"a": {"1": '
                    '{"marName": "a.mar"}}}}\n')
    assert read_ts_config(path).settings["ts_model_snapshot"] == {}


# -- archives linked into the model store (ts_scripts/marsgen.py links every .mar) ----------


@pytest.fixture
def linked_store(tmp_path):
    """store/linked.mar -> elsewhere/real.mar; store/dir -> elsewhere; elsewhere/secret.mar."""
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    for name in ("real.mar", "secret.mar"):
        (elsewhere / name).write_bytes(b"PK")
    os.symlink(elsewhere / "real.mar", store / "linked.mar")
    os.symlink(elsewhere, store / "dir")
    (store / "sub").mkdir()
    return store


def resolve(url: str, store: Path) -> Path:
    return resolve_archive(url, store, store.parent / "work", [])


@pytest.mark.parametrize("url", ["linked.mar", "dir/real.mar", "./linked.mar"])
def test_a_link_in_the_store_is_followed(linked_store, url):
    assert resolve(url, linked_store).resolve() == linked_store.parent / "elsewhere/real.mar"


def test_a_link_in_the_store_is_followed_by_absolute_path(linked_store):
    for url in (str(linked_store / "linked.mar"), f"file://{linked_store / 'linked.mar'}"):
        assert resolve(url, linked_store).read_bytes() == b"PK"


@pytest.mark.parametrize("url", [
    "dir/../elsewhere/secret.mar", "sub/../dir/../elsewhere/secret.mar",
    "../elsewhere/secret.mar", "dir/../../elsewhere/secret.mar",
])
def test_dot_dot_through_a_link_is_still_refused(linked_store, url):
    with pytest.raises(BadRequestError, match="outside the model store"):
        resolve(url, linked_store)
