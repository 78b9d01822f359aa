"""OIP v2 over REST, with tritonclient (sync and aio) and by hand, against a real server."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

SHAPES = {"digits": [1, 8, 8], "digits_onnx": [1, 8, 8], "resnet": [3, 64, 64],
          "resnet_onnx": [3, 64, 64]}
DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
          "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
          "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
          "BYTES": np.object_}


def url(server) -> str:
    return server.inference.removeprefix("http://")


def sample(model: str, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((batch, *SHAPES[model]), dtype=np.float32)


def typed_array(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if datatype == "BYTES":
        values = [f"é{i}-{'x' * (i % 5)}".encode() for i in range(n)]
        return np.array(values, dtype=np.object_).reshape(shape)
    if datatype == "BOOL":
        return rng.random(shape) > 0.5
    dtype = np.dtype(DTYPES[datatype])
    if dtype.kind == "f":
        return (rng.random(shape) * 100 - 50).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


@pytest.fixture(scope="module")
def client(v2_server):
    c = httpclient.InferenceServerClient(url(v2_server), network_timeout=120)
    yield c
    c.close()


def test_server_health_and_metadata(v2_server, client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "modelserve"
    assert "binary_tensor_data" in meta["extensions"]
    for model in ("digits", "digits_onnx", "resnet", "resnet_onnx", "identity"):
        assert client.is_model_ready(model)
        assert client.is_model_ready(model, "1.0")
    assert not client.is_model_ready("nope")
    r = httpx.get(f"{v2_server.inference}/v2/models/nope/ready")
    assert r.status_code == 404 and "nope" in r.json()["error"]


@pytest.mark.parametrize("model", ["digits", "digits_onnx", "resnet", "resnet_onnx"])
def test_model_metadata_comes_from_the_model(client, model):
    meta = client.get_model_metadata(model)
    assert meta["name"] == model and meta["versions"] == ["1.0"]
    assert meta["platform"] == ("onnxruntime_onnx" if model.endswith("onnx")
                                else "pytorch_libtorch")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32",
                               "shape": [-1, *SHAPES[model]]}]
    classes = 10 if model.startswith("digits") else 1000
    assert [(o["name"], o["datatype"], o["shape"][1:]) for o in meta["outputs"]] == [
        ("output", "FP32", [classes])]
    assert client.get_model_metadata(model, "1.0") == meta


def test_model_config_and_statistics(client):
    config = client.get_model_config("digits")
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]
    assert config["output"][0]["name"] == "output"
    before = client.get_inference_statistics("digits")["model_stats"][0]
    inp = httpclient.InferInput("input", [2, 1, 8, 8], "FP32")
    inp.set_data_from_numpy(sample("digits", 2))
    client.infer("digits", [inp])
    after = client.get_inference_statistics("digits")["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] == \
        before["inference_stats"]["success"]["count"] + 1
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["execution_count"] >= before["execution_count"] + 1
    for kind in ("queue", "compute_infer"):
        assert after["inference_stats"][kind]["count"] == \
            before["inference_stats"][kind]["count"] + 1
    assert after["inference_stats"]["compute_infer"]["ns"] > \
        before["inference_stats"]["compute_infer"]["ns"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", ["digits", "digits_onnx", "resnet", "resnet_onnx"])
def test_infer_equals_the_direct_model(client, direct_models, model, binary):
    x = sample(model, 3, seed=len(model))
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("output", binary_data=binary)
    result = client.infer(model, [inp], outputs=[out], request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    assert result.get_response()["model_name"] == model
    np.testing.assert_allclose(result.as_numpy("output"), direct_models[model](x),
                               rtol=1e-4, atol=1e-4)


def test_default_client_call_with_no_outputs_named(client, direct_models):
    """tritonclient's defaults: binary input, binary_data_output for every output."""
    x = sample("digits_onnx", 1)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("digits_onnx", [inp], model_version="1.0")
    np.testing.assert_allclose(result.as_numpy("output"), direct_models["digits_onnx"](x),
                               rtol=1e-4, atol=1e-5)


async def test_async_client(v2_server, direct_models):
    client = aiohttpclient.InferenceServerClient(url(v2_server))
    try:
        assert await client.is_server_ready()
        meta = await client.get_model_metadata("resnet_onnx")
        assert meta["inputs"][0]["shape"] == [-1, 3, 64, 64]
        x = sample("resnet_onnx", 2, seed=3)
        inp = aiohttpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = await client.infer("resnet_onnx", [inp])
        np.testing.assert_allclose(result.as_numpy("output"), direct_models["resnet_onnx"](x),
                                   rtol=1e-4, atol=1e-4)
    finally:
        await client.close()


def test_plain_json_request_by_hand(v2_server, direct_models):
    """Nested JSON data, an id and a requested output, without any client library."""
    x = sample("digits", 1, seed=5)
    body = {"id": "abc", "inputs": [{"name": "input", "shape": [1, 1, 8, 8],
                                     "datatype": "FP32", "data": x.tolist()}],
            "outputs": [{"name": "output"}]}
    r = httpx.post(f"{v2_server.inference}/v2/models/digits/versions/1.0/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["id"] == "abc" and doc["model_name"] == "digits" and doc["model_version"] == "1.0"
    (out,) = doc["outputs"]
    assert out["name"] == "output" and out["datatype"] == "FP32" and out["shape"] == [1, 10]
    np.testing.assert_allclose(np.array(out["data"]).reshape(1, 10), direct_models["digits"](x),
                               rtol=1e-4, atol=1e-5)


def test_binary_request_and_response_by_hand(v2_server, direct_models):
    x = sample("digits", 2, seed=6)
    header = json.dumps({"inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    r = httpx.post(f"{v2_server.inference}/v2/models/digits/infer", content=header + x.tobytes(),
                   headers={"Inference-Header-Content-Length": str(len(header)),
                            "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    size = int(r.headers["inference-header-content-length"])
    doc = json.loads(r.content[:size])
    (out,) = doc["outputs"]
    assert out["parameters"]["binary_data_size"] == 2 * 10 * 4 and "data" not in out
    y = np.frombuffer(r.content[size:], dtype="<f4").reshape(out["shape"])
    np.testing.assert_allclose(y, direct_models["digits"](x), rtol=1e-4, atol=1e-5)


def _post(server, model: str, body, headers=None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.inference}/v2/models/{model}/infer", content=content,
                      headers=headers or {}, timeout=60)


def _tensor(shape, datatype="FP32", data=None, name="input"):
    n = int(np.prod(shape))
    return {"name": name, "shape": shape, "datatype": datatype,
            "data": data if data is not None else [0.5] * n}


@pytest.mark.parametrize(("model", "body", "status", "message"), [
    ("digits", {"inputs": [_tensor([1, 1, 8, 7])]}, 400, r"shape \[1, 1, 8, 7\] does not match"),
    ("digits", {"inputs": [_tensor([1, 64])]}, 400, r"does not match the model's \[-1, 1, 8, 8\]"),
    ("digits", {"inputs": [_tensor([1, 1, 8, 8], "FP64")]}, 400, r"datatype FP64.*expects FP32"),
    ("digits", {"inputs": [_tensor([1, 1, 8, 8], data=[1.0] * 10)]}, 400,
     r"10 FP32 values for shape \[1, 1, 8, 8\] \(64 expected\)"),
    ("digits", {"inputs": [_tensor([1, 1, 8, 8], data=["a"] * 64)]}, 400, r"not a .*numbers"),
    ("digits", {"inputs": [_tensor([1, 1, 8, 8])], "outputs": [{"name": "nope"}]}, 400,
     r"unknown output 'nope'"),
    ("digits", {"inputs": [_tensor([1, 1, 8, 8], name="x")]}, 400, r"unexpected input 'x'"),
    ("digits", {"inputs": []}, 400, r"non-empty list"),
    ("digits", {"inputs": [_tensor([1, 1, 8, 8], "FP99")]}, 400, r"unsupported datatype"),
    ("digits", {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}]}, 400,
     r"neither 'data' nor binary_data_size"),
    ("digits", b'{"inputs": [', 400, r"not valid JSON"),
    ("digits", b"[1, 2]", 400, r"must be a JSON object"),
    ("nope", {"inputs": [_tensor([1, 1, 8, 8])]}, 404, r"Model not found: nope"),
    ("identity", {"inputs": [_tensor([2], "BYTES", [1, 2])]}, 400, r"must be strings"),
    ("identity", {"inputs": [_tensor([2], "INT8", [1, 900])]}, 400, r"INT8 data"),
    ("identity", {"inputs": [_tensor([1], "INT32", [1])], "outputs": [{"name": "zzz"}]}, 400,
     r"unknown output"),
    # a bool is an int to Python, not a dimension (it reached the worker's reshape: a 500)
    ("digits", {"inputs": [_tensor([True, 1, 8, 8], data=[0.5] * 64)]}, 400,
     r"dimensions must be integers"),
    # parameters are booleans, numbers and strings; a deeply nested one could not be framed
    # for the worker, its request was never answered and it held the worker's pipeline slot
    ("digits", b'{"parameters": {"x": ' + b"[" * 1020 + b"0" + b"]" * 1020 + b'}, "inputs": ['
     + json.dumps(_tensor([1, 1, 8, 8])).encode() + b"]}", 400,
     r"request parameter 'x' must be a boolean, number or string, not list"),
    ("digits", {"inputs": [{**_tensor([1, 1, 8, 8]), "parameters": {"p": {"a": 1}}}]}, 400,
     r"input 'input' parameter 'p' must be a boolean, number or string, not dict"),
])
def test_bad_requests_are_4xx_with_the_protocol_error_shape(v2_server, model, body, status,
                                                            message):
    r = _post(v2_server, model, body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    assert re.search(message, r.json()["error"]), r.json()["error"]


@pytest.mark.parametrize(("header_len", "extra", "message"), [
    ("abc", b"", r"invalid Inference-Header-Content-Length"),
    ("9999", b"", r"outside the body"),
    (None, b"\x00" * 10, r"binary_data_size 256 runs past the end"),
    (None, b"\x00" * 300, r"44 bytes of binary data are not claimed"),
    (None, b"\x00" * 256, r"binary_data_size True"),
])
def test_bad_binary_requests_are_400(v2_server, header_len, extra, message):
    size = True if "True" in message else 256  # a bool is not a size
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]}).encode()
    r = _post(v2_server, "digits", header + extra,
              {"Inference-Header-Content-Length": header_len or str(len(header))})
    assert r.status_code == 400, r.text
    assert re.search(message, r.json()["error"]), r.json()["error"]


def test_handler_failure_is_reported_and_server_stays_up(client, v2_server):
    inp = httpclient.InferInput("x", [1], "INT32")
    inp.set_data_from_numpy(np.array([1], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="asked to fail") as info:
        client.infer("identity", [inp], parameters={"fail": True})
    assert info.value.status() == "500"
    with pytest.raises(InferenceServerException, match="Model not found"):
        client.infer("nope", [inp])
    assert client.is_server_live() and client.is_model_ready("identity")
    assert client.infer("identity", [inp]).as_numpy("x").tolist() == [1]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(DTYPES))
def test_every_datatype_round_trips(client, datatype, binary):
    x = typed_array(datatype, (2, 3), seed=len(datatype))
    if datatype == "BYTES" and not binary:
        x = np.array([v.decode() for v in x.ravel()], dtype=np.object_).reshape(x.shape)
    inp = httpclient.InferInput("x", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("x", binary_data=binary),
               httpclient.InferRequestedOutput("params", binary_data=binary)]
    result = client.infer("identity", [inp], outputs=outputs,
                          parameters={"tag": "t1", "n": 3, "flag": True})
    (meta,) = [o for o in result.get_response()["outputs"] if o["name"] == "x"]
    assert meta["datatype"] == datatype and meta["shape"] == [2, 3]
    got = result.as_numpy("x")
    if datatype == "BYTES":
        want = [v if isinstance(v, bytes) else v.encode() for v in x.ravel()]
        assert [v.encode() if isinstance(v, str) else bytes(v) for v in got.ravel()] == want
    else:
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, x)
    params = json.loads(result.as_numpy("params")[0])
    assert params == {"flag": True, "n": 3, "tag": "t1"}


def test_multiple_inputs_and_output_selection(client):
    a = typed_array("INT64", (1, 4))
    b = typed_array("FP16", (1, 2))
    inputs = []
    for name, arr in (("a", a), ("b", b)):
        inp = httpclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr, binary_data=name == "a")
        inputs.append(inp)
    result = client.infer("identity", inputs,
                          outputs=[httpclient.InferRequestedOutput("b", binary_data=False)])
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["b"]
    np.testing.assert_array_equal(result.as_numpy("b"), b)


async def _concurrent(server, model, batches):
    client = aiohttpclient.InferenceServerClient(url(server), conn_limit=len(batches))
    try:
        async def one(x):
            inp = aiohttpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return (await client.infer(model, [inp])).as_numpy("output")
        return await asyncio.gather(*(one(x) for x in batches))
    finally:
        await client.close()


def test_concurrent_requests_are_batched_and_split_back(client, v2_server, direct_models):
    """Requests of 1-3 samples each are concatenated along dim 0 in one worker batch and
    every caller gets exactly its own rows back."""
    batches = [sample("resnet", 1 + i % 3, seed=100 + i) for i in range(24)]
    before = client.get_inference_statistics("resnet")["model_stats"][0]
    outs = asyncio.run(_concurrent(v2_server, "resnet", batches))
    after = client.get_inference_statistics("resnet")["model_stats"][0]
    for x, y in zip(batches, outs):
        assert y.shape == (len(x), 1000)
        np.testing.assert_allclose(y, direct_models["resnet"](x), rtol=1e-3, atol=1e-4)
    executions = after["execution_count"] - before["execution_count"]
    assert after["inference_count"] - before["inference_count"] == sum(len(x) for x in batches)
    assert executions < len(batches), f"{len(batches)} requests ran in {executions} batches"


async def _identity_burst(server, n):
    client = aiohttpclient.InferenceServerClient(url(server), conn_limit=n)
    try:
        async def one(i):
            inp = aiohttpclient.InferInput("x", [1], "INT32")
            inp.set_data_from_numpy(np.array([i], dtype=np.int32))
            r = await client.infer("identity", [inp], parameters={"sleep": 0.05})
            return int(r.as_numpy("x")[0]), int(r.as_numpy("batch")[0])
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()


def test_custom_handler_sees_v2_requests_batched(v2_server):
    results = asyncio.run(_identity_burst(v2_server, 20))
    assert [x for x, _ in results] == list(range(20))
    assert max(b for _, b in results) > 1


async def _mixed(server, direct_models):
    from modelserve.cli import DIGIT_ZERO

    x = np.array(DIGIT_ZERO, dtype=np.float32).reshape(1, 1, 8, 8)
    v2_body = {"inputs": [_tensor([1, 1, 8, 8], data=x.ravel().tolist())]}
    async with httpx.AsyncClient(timeout=60) as http:
        calls = []
        for i in range(30):
            if i % 2:
                calls.append(http.post(f"{server.inference}/v2/models/digits/infer",
                                       json=v2_body))
            else:
                calls.append(http.post(f"{server.inference}/predictions/digits",
                                       json=DIGIT_ZERO))
        responses = await asyncio.gather(*calls)
    want = direct_models["digits"](x)
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        if i % 2:
            got = np.array(r.json()["outputs"][0]["data"]).reshape(1, 10)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        else:
            assert r.json()["class"] == 0


def test_torchserve_and_v2_requests_share_batches(v2_server, direct_models):
    asyncio.run(_mixed(v2_server, direct_models))


def test_kserve_v1_predict(v2_server, direct_models):
    x = sample("digits", 2, seed=9)
    r = httpx.post(f"{v2_server.inference}/v1/models/digits:predict",
                   json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["predictions"]), direct_models["digits"](x),
                               rtol=1e-4, atol=1e-5)
    assert httpx.get(f"{v2_server.inference}/v1/models/digits").json() == {
        "name": "digits", "ready": True}
    r = httpx.post(f"{v2_server.inference}/v1/models/digits:predict", json={"rows": []})
    assert r.status_code == 400 and "instances" in r.json()["error"]


def test_repository_load_and_unload(v2_server):
    """tritonclient's model-repository calls map onto register / unregister."""
    client = httpclient.InferenceServerClient(url(v2_server), network_timeout=120)
    try:
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["digits"]["state"] == "READY"
        assert index["echo"]["state"] == "UNAVAILABLE"
        client.load_model("echo")
        assert client.is_model_ready("echo")
        assert {m["name"]: m for m in client.get_model_repository_index()}["echo"]["state"] \
            == "READY"
        client.unload_model("echo")
        assert not client.is_model_ready("echo")
        with pytest.raises(InferenceServerException, match="no archive named nothing"):
            client.load_model("nothing")
        with pytest.raises(InferenceServerException, match="invalid model name '.hidden'"):
            client.load_model(".hidden")  # refused before it names a file (was a 500)
    finally:
        client.close()


def test_repository_index_lists_what_load_models_all_loads(tmp_path):
    """Archives and unpacked model directories (with MAR-INF) alike, in both listings."""
    from modelserve.config import Settings
    from modelserve.server.engine.dataplane import DataPlane
    from modelserve.server.engine.startup import startup_archives
    from modelserve.server.observability.metrics import ServerMetrics
    from modelserve.server.transport.v2.core import V2Core

    store = tmp_path / "store"
    (store / "unpacked" / "MAR-INF").mkdir(parents=True)
    (store / "not_a_model").mkdir()
    for name in ("a.mar", "b.tar.gz", "c.zip", "notes.txt"):
        (store / name).write_bytes(b"")
    settings = Settings(model_store=store, workdir=tmp_path / "work", load_models=["all"])
    plane = DataPlane(settings, ServerMetrics())
    index = V2Core(plane).repository_index()
    assert [m["name"] for m in index] == ["a", "b", "c", "unpacked"]
    assert all(m["state"] == "UNAVAILABLE" for m in index)
    assert [archive for _, archive in startup_archives(plane.settings)] == [
        "a.mar", "b.tar.gz", "c.zip", "unpacked"]
