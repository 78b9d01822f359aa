"""The model snapshot over real restarts: models, versions, default versions and worker
counts come back; a corrupt snapshot is set aside and the server still starts."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import httpx
import pytest

from modelserve.archive import create_archive
from tests.conftest import ECHO_HANDLER, Server, wait_logged


@pytest.fixture(scope="module")
def versioned_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """echo 1.0 and echo 2.0 (two archives of one model), no torch: they load fast."""
    store = tmp_path_factory.mktemp("state-store")
    src = tmp_path_factory.mktemp("state-src")
    handler = src / "echo_handler.py"
    handler.write_text(ECHO_HANDLER)
    for version in ("1.0", "2.0"):
        out = src / version
        out.mkdir()
        path = create_archive(model_name="echo", version=version, handler=str(handler),
                              export_path=out)
        path.rename(store / f"echo_v{version[0]}.mar")
    return store


def describe(srv: Server, path: str) -> list[dict]:
    r = httpx.get(f"{srv.management}/models/{path}")
    assert r.status_code == 200, r.text
    return r.json()


def snapshot_path(srv: Server) -> Path:
    return srv.root / "work" / "state" / "models.json"


def test_models_versions_defaults_and_workers_survive_a_restart(versioned_store, tmp_path):
    srv = Server(tmp_path, versioned_store, ["echo_v1.mar"])
    srv.start()
    try:
        m = srv.management
        assert httpx.post(f"{m}/models", params={"url": "echo_v2.mar", "batch_size": 4,
                                                 "max_batch_delay": 7}).status_code == 200
        assert httpx.put(f"{m}/models/echo/2.0/set-default").status_code == 200
        r = httpx.put(f"{m}/models/echo/2.0", params={"min_worker": 2, "synchronous": "true"})
        assert r.status_code == 200
        assert httpx.post(f"{m}/models", params={"url": "echo_v1.mar", "model_name": "other",
                                                 "initial_workers": 0}).status_code == 200
        assert httpx.delete(f"{m}/models/other").status_code == 200
        saved = json.loads(snapshot_path(srv).read_text())
        assert {(e["name"], e["version"]) for e in saved["models"]} == {
            ("echo", "1.0"), ("echo", "2.0")}
    finally:
        assert not srv.stop()

    # the snapshot brings back what the API changed; load_models adds only what it lacks
    srv.load_models = ["echo_v1.mar", "added=echo_v2.mar"]
    srv.start()
    try:
        versions = {d["modelVersion"]: d for d in describe(srv, "echo/all")}
        assert set(versions) == {"1.0", "2.0"}
        assert describe(srv, "echo")[0]["modelVersion"] == "2.0"  # default kept
        v2 = versions["2.0"]
        assert (v2["minWorkers"], v2["batchSize"], v2["maxBatchDelay"]) == (2, 4, 7)
        assert len([w for w in v2["workers"] if w["status"] == "READY"]) == 2
        assert versions["1.0"]["minWorkers"] == 1
        assert httpx.get(f"{srv.management}/models/other").status_code == 404
        r = httpx.post(f"{srv.inference}/predictions/echo", json={"x": 1})
        assert r.status_code == 200
        added = describe(srv, "added")[0]  # in load_models, not in the snapshot
        assert (added["modelVersion"], added["minWorkers"], added["batchSize"]) == ("2.0", 1, 1)
        wait_logged(srv, "restoring 2 model version(s)")
    finally:
        srv.stop()


def test_corrupt_snapshot_is_set_aside_and_the_server_starts(versioned_store, tmp_path):
    srv = Server(tmp_path, versioned_store, ["echo_v1.mar"])
    state = snapshot_path(srv)
    state.parent.mkdir(parents=True)
    state.write_text('{"format": 1, "models": [{"name": "echo", "url": ')  # cut short
    srv.start()
    try:
        wait_logged(srv, "is corrupt", "starting without it")
        aside = list(state.parent.glob("models.json.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_text().endswith('"url": ')
        # started from load_models, and wrote a good snapshot again
        assert describe(srv, "echo")[0]["modelVersion"] == "1.0"
        assert json.loads(state.read_text())["models"][0]["name"] == "echo"
    finally:
        srv.stop()


@pytest.mark.parametrize("content", [
    "[]", '{"format": 99, "models": []}', '{"format": 1, "models": [{"name": 3}]}',
    textwrap.dedent("\x00\x01binary"),
])
def test_snapshot_of_the_wrong_shape_is_refused(content, tmp_path):
    from modelserve.server.engine.snapshot import Snapshot

    state = tmp_path / "models.json"
    state.write_text(content)
    assert Snapshot(tmp_path).load() is None
    assert not state.exists() and list(tmp_path.glob("models.json.corrupt-*"))


def test_snapshot_can_be_switched_off(versioned_store, tmp_path):
    srv = Server(tmp_path, versioned_store, ["echo_v1.mar"],
                 extra_config={"model_snapshot": False})
    srv.start()
    try:
        r = httpx.post(f"{srv.management}/models", params={"url": "echo_v2.mar"})
        assert r.status_code == 200
        assert not snapshot_path(srv).exists()
    finally:
        srv.stop()


def test_snapshot_write_is_atomic(tmp_path, monkeypatch):
    """A failing write leaves the previous snapshot whole (write temp + os.replace)."""
    import os

    from modelserve.server.engine.snapshot import Snapshot

    snap = Snapshot(tmp_path)
    snap.save([{"name": "a", "url": "a.mar"}])

    def broken_write(fd, data):
        raise OSError("disk full")

    monkeypatch.setattr(os, "write", broken_write)
    with pytest.raises(OSError):
        snap.save([{"name": "b", "url": "b.mar"}])
    monkeypatch.undo()
    assert snap.load() == [{"name": "a", "url": "a.mar"}]
    assert [p.name for p in tmp_path.iterdir()] == ["models.json"]  # no temp file left
