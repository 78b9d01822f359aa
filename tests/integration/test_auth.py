"""Token authorization over real HTTP: on by default, keys in a 0600 key file, 401 without
them, rotation, persistence across restarts; enable_model_api."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import Server, wait_logged

DENIED = {"code": 401, "type": "InvalidKeyException",
          "message": "Token Authorization failed. Token either incorrect, expired, or not "
                     "provided correctly"}


@pytest.fixture
def auth_server(model_store: Path, tmp_path: Path):
    srv = Server(tmp_path, model_store, ["echo.mar"], auth=True)
    srv.start()
    yield srv
    srv.stop()


def keys(srv: Server) -> dict:
    return json.loads((srv.root / "work" / "key_file.json").read_text())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_key_file_is_owner_only_with_torchserve_shape(auth_server):
    path = auth_server.root / "work" / "key_file.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = keys(auth_server)
    assert set(data) == {"inference", "management", "API"}
    values = [data[k]["key"] for k in data]
    assert len(set(values)) == 3 and all(len(v) >= 40 for v in values)
    wait_logged(auth_server, str(path))  # the banner says where the keys are


def test_inference_needs_the_inference_key(auth_server):
    url = f"{auth_server.inference}/predictions/echo"
    k = keys(auth_server)
    for headers in ({}, bearer("wrong"), bearer(k["management"]["key"]),
                    {"Authorization": k["inference"]["key"]},  # no "Bearer "
                    bearer(k["inference"]["key"] + "x")):
        r = httpx.post(url, json={"a": 1}, headers=headers)
        assert r.status_code == 401, headers
        assert r.json() == DENIED
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.post(url, json={"a": 1}, headers=bearer(k["inference"]["key"]))
    assert r.status_code == 200 and r.json()["echo"] == {"a": 1}


def test_management_needs_the_management_key(auth_server):
    k = keys(auth_server)
    url = f"{auth_server.management}/models"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=bearer(k["inference"]["key"])).status_code == 401
    r = httpx.post(url, params={"url": "digits.mar"}, headers=bearer(k["inference"]["key"]))
    assert r.status_code == 401
    r = httpx.get(url, headers=bearer(k["management"]["key"]))
    assert r.status_code == 200 and r.json()["models"][0]["modelName"] == "echo"


def test_open_paths_need_no_key(auth_server):
    assert httpx.get(f"{auth_server.inference}/ping").json() == {"status": "Healthy"}
    assert httpx.get(f"{auth_server.inference}/api-description").status_code == 200
    assert httpx.request("OPTIONS", f"{auth_server.management}/").status_code == 200
    assert httpx.get(f"{auth_server.metrics}/metrics").status_code == 200


def test_api_key_rotates_a_key(auth_server):
    old = keys(auth_server)
    url = f"{auth_server.management}/token"
    assert httpx.get(url, params={"type": "inference"},
                     headers=bearer(old["management"]["key"])).status_code == 401
    r = httpx.get(url, params={"type": "inference"}, headers=bearer(old["API"]["key"]))
    assert r.status_code == 200
    new = r.json()["inference"]["key"]
    assert new != old["inference"]["key"] and keys(auth_server)["inference"]["key"] == new
    predict = f"{auth_server.inference}/predictions/echo"
    assert httpx.post(predict, json=1, headers=bearer(old["inference"]["key"])).status_code \
        == 401
    assert httpx.post(predict, json=1, headers=bearer(new)).status_code == 200
    assert httpx.get(url, params={"type": "API"},
                     headers=bearer(old["API"]["key"])).status_code == 400


def test_keys_survive_a_restart_and_cli_prints_them(auth_server):
    before = keys(auth_server)
    auth_server.stop()
    auth_server.start()
    assert keys(auth_server) == before
    out = subprocess.run(
        [sys.executable, "-m", "modelserve", "key", "management", "--config",
         str(auth_server.root / "config.yaml")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == before["management"]["key"]


def test_disable_token_auth_setting(model_store, tmp_path):
    srv = Server(tmp_path, model_store, ["echo.mar"], auth=True,
                 extra_config={"disable_token_auth": True})
    srv.start()
    try:
        assert httpx.post(f"{srv.inference}/predictions/echo", json=1).status_code == 200
        assert httpx.get(f"{srv.management}/models").status_code == 200
        assert not (tmp_path / "work" / "key_file.json").exists()
        wait_logged(srv, "token authorization is disabled")
    finally:
        srv.stop()


def test_model_api_can_be_switched_off(model_store, tmp_path):
    srv = Server(tmp_path, model_store, ["echo.mar"], extra_config={"enable_model_api": False})
    srv.start()
    try:
        r = httpx.post(f"{srv.management}/models", params={"url": "digits.mar"})
        assert (r.status_code, r.json()) == (405, {  # TorchServe's body, word for word
            "code": 405, "type": "MethodNotAllowedException",
            "message": "Requested method is not allowed, please refer to API document."})
        wait_logged(srv, "enable_model_api is false")
        assert httpx.delete(f"{srv.management}/models/echo").status_code == 405
        assert httpx.get(f"{srv.management}/models/echo").status_code == 200
        r = httpx.put(f"{srv.management}/models/echo", params={"min_worker": 1,
                                                                "synchronous": "true"})
        assert r.status_code == 200
        assert httpx.post(f"{srv.inference}/predictions/echo", json=1).status_code == 200
    finally:
        srv.stop()


def test_key_file_readable_by_others_is_made_owner_only(tmp_path):
    from modelserve.server.transport.auth import KeyStore

    path = tmp_path / "key_file.json"
    first = KeyStore(path).keys
    path.chmod(0o644)
    assert KeyStore(path).keys == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_corrupt_key_file_stops_the_server_with_a_clear_message(model_store, tmp_path):
    srv = Server(tmp_path, model_store, [], auth=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "key_file.json").write_text('{"inference": {"key": "short"}}')
    with pytest.raises(RuntimeError, match="exited early"):
        srv.start(timeout=30)
    assert srv.proc is not None and srv.proc.wait(10) == 2
    wait_logged(srv, "unreadable key file", "delete it to get new keys")


def test_oip_v2_rest_and_grpc_need_the_inference_key(auth_server):
    """The v2 routes sit behind the same key; gRPC reads it from the call's metadata."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    k = keys(auth_server)["inference"]["key"]
    url = f"{auth_server.inference}/v2/models/echo"
    refused = httpx.get(url)
    # tritonclient and perf_analyzer read the OIP's "error" member of a failed call
    assert (refused.status_code, refused.json()["error"]) == (401, refused.json()["message"])
    assert httpx.get(url, headers=bearer(k)).status_code == 200

    client = grpcclient.InferenceServerClient(auth_server.grpc)
    try:
        assert client.is_server_live()  # probes stay open, like /ping
        with pytest.raises(InferenceServerException, match="Token Authorization failed"):
            client.get_model_metadata("echo")
        with pytest.raises(InferenceServerException, match="Token Authorization failed"):
            client.get_model_metadata("echo", headers={"authorization": "Bearer wrong"})
        meta = client.get_model_metadata("echo", headers={"authorization": f"Bearer {k}"})
        assert meta.name == "echo"
        errors: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: errors.put(error))
        tensor = grpcclient.InferInput("x", [1], "FP32")
        tensor.set_data_from_numpy(np.zeros(1, dtype=np.float32))
        with contextlib.suppress(InferenceServerException):  # the stream may be gone already
            client.async_stream_infer("echo", [tensor])
        assert "Token Authorization failed" in str(errors.get(timeout=10))
        client.stop_stream()
    finally:
        client.close()


def test_refusals_use_the_error_body_of_every_other_error(tmp_path):
    """The middleware's 401 / 400 leave exactly as an error raised inside the app does."""
    from fastapi import FastAPI

    from modelserve.errors import ModelServeError
    from modelserve.server.transport.auth import KeyStore, TokenAuth
    from modelserve.server.transport.http.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    async def fails(_):
        raise ModelServeError("inside", status=418, type="TeapotException")

    app.add_route("/fails", fails)
    store = KeyStore(tmp_path / "key_file.json")

    def call(method: str, path: str, **kwargs) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(TokenAuth(app, store, "management"))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.request(method, path, **kwargs)
        return asyncio.run(go())

    inside = call("GET", "/fails", headers=bearer(store.keys["management"]))
    assert inside.status_code == 418
    denied = call("GET", "/fails")
    assert denied.status_code == 401 and denied.json() == DENIED
    assert denied.headers["www-authenticate"].startswith("Bearer")
    bad = call("POST", "/token", params={"type": "API"}, headers=bearer(store.keys["API"]))
    assert bad.status_code == 400 and bad.json()["type"] == "BadRequestException"
    for r in (denied, bad):
        assert r.headers["content-type"] == inside.headers["content-type"]
        assert list(r.json()) == list(inside.json()) == ["code", "type", "message"]
        assert r.json()["code"] == r.status_code
        assert r.headers["content-length"] == str(len(r.content))
    rotated = call("GET", "/token", params={"type": "inference"},
                   headers=bearer(store.keys["API"]))
    assert rotated.json() == {"inference": {"key": store.keys["inference"]}}
