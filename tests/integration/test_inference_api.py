"""Inference API over real HTTP against real worker processes."""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import struct
import zlib

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from modelserve.cli import DIGIT_ZERO
from modelserve.examples.digits import load_split

JSON = {"Content-Type": "application/json"}


def predict(server, model: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.inference}/predictions/{model}", timeout=60, **kwargs)


def test_ping_is_healthy(server):
    r = httpx.get(f"{server.inference}/ping")
    assert r.status_code == 200
    assert r.json() == {"status": "Healthy"}


@pytest.mark.parametrize("model", ["digits", "digits_onnx"])
def test_digit_json_is_classified(server, model):
    r = predict(server, model, json=DIGIT_ZERO)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["class"] == 0 and body["label"] == "zero"
    assert body["probability"] > 0.9
    assert r.headers["x-request-id"]


def test_served_answers_equal_direct_model(server, digits_model):
    _, _, x_test, _ = load_split()
    with torch.inference_mode():
        direct = torch.softmax(digits_model(torch.from_numpy(x_test[:20])), 1)
    for i in range(20):
        for model in ("digits", "digits_onnx"):
            body = predict(server, model, json=x_test[i].ravel().tolist()).json()
            assert body["class"] == int(direct[i].argmax())
            assert body["probability"] == pytest.approx(float(direct[i].max()), abs=1e-4)


def test_digit_png_is_classified(server):
    pixels = (np.array(DIGIT_ZERO, dtype=np.float32).reshape(8, 8) * 255 / 16).round()
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buf, format="PNG")
    r = predict(server, "digits", content=buf.getvalue(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["class"] == 0


def test_npy_and_raw_tensor_bodies(server):
    x = np.array(DIGIT_ZERO, dtype=np.float32).reshape(1, 8, 8)
    buf = io.BytesIO()
    np.save(buf, x)
    r = predict(server, "digits", content=buf.getvalue(),
                headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200 and r.json()["class"] == 0
    r = predict(server, "digits", content=x.tobytes(),
                headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and r.json()["class"] == 0


def test_curl_style_form_body_with_json(server):
    """`curl -d '[...]'` sends application/x-www-form-urlencoded; the JSON is still read."""
    body = "[" + ",".join(map(str, DIGIT_ZERO)) + "]"
    r = predict(server, "digits", content=body,
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json()["class"] == 0


def test_explicit_version_route(server):
    r = httpx.post(f"{server.inference}/predictions/digits/1.0", json=DIGIT_ZERO)
    assert r.status_code == 200 and r.json()["class"] == 0


def test_request_id_is_echoed(server):
    r = predict(server, "digits", json=DIGIT_ZERO, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("POST", "/predictions/nope", 404, "ModelNotFoundException"),
        ("POST", "/predictions/digits/9.9", 404, "ModelNotFoundException"),
        ("POST", "/no/such/route", 404, "ResourceNotFoundException"),
        ("GET", "/predictions/digits", 405, "MethodNotAllowedException"),
    ],
)
def test_unknown_model_version_route(server, method, path, status, kind):
    r = httpx.request(method, f"{server.inference}{path}", json=DIGIT_ZERO)
    assert r.status_code == status
    assert r.json()["type"] == kind
    assert set(r.json()) == {"code", "type", "message"}


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none: a decompression bomb
    to Pillow, refused when opened."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                                  0, 0, 0)) + chunk(b"IEND", b""))


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


NPY = {"Content-Type": "application/x-npy"}


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"[1, 2, 3]", JSON, r"expected 64 values .*got 3"),
        (b"[1, 2,", JSON, r"not valid JSON"),
        (b'{"x": 1}', JSON, r"under one of"),
        (b'["a", "b"]', JSON, r"list of numbers"),
        (b"\x00\x01\x02", {"Content-Type": "application/octet-stream"}, r"unrecognised body"),
        (b"\x89PNG\r\n\x1a\nbroken", {"Content-Type": "image/png"}, r"cannot decode image"),
        (b"", JSON, r"not valid JSON"),
        # these three were 500s: Pillow's bomb check, a .npy of strings, a broken .npy header
        (png_header(20000, 20000), {"Content-Type": "image/png"}, r"image is too large"),
        (npy(np.array(["abc"] * 64)), NPY, r"dtype <U3 is not float32 numbers"),
        (npy(np.zeros(64, np.float32)).replace(b"}", b"", 1), NPY, r"invalid \.npy body"),
    ],
)
def test_bad_input_is_400_with_a_message(server, body, headers, message):
    r = predict(server, "digits", content=body, headers=headers)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["code"] == 400 and err["type"] == "BadRequestException"
    assert re.search(message, err["message"]), err["message"]


def test_body_over_max_request_size_is_413(server):
    r = predict(server, "digits", content=b"0" * 6553501, headers=JSON)
    assert r.status_code == 413
    assert "max_request_size" in r.json()["message"]


def test_handler_exception_is_500_and_worker_keeps_serving(server):
    r = predict(server, "echo", json={"boom": True})
    assert r.status_code == 500
    assert "kaboom" in r.json()["message"]
    r = predict(server, "echo", json={"hello": 1})
    assert r.status_code == 200 and r.json()["echo"] == {"hello": 1}


def test_nan_and_infinity_reach_the_handler_and_come_back_as_torchserve_writes_them(server):
    """Python's json (TorchServe's worker, most clients) writes NaN for a missing value."""
    body = json.dumps({"x": [float("nan"), float("inf"), -float("inf"), 1.0]})
    r = predict(server, "echo", content=body.encode(), headers=JSON)
    assert r.status_code == 200, r.text
    assert b'"x":[NaN,Infinity,-Infinity,1.0]' in r.content
    x = json.loads(r.content)["echo"]["x"]
    assert math.isnan(x[0]) and x[1:] == [math.inf, -math.inf, 1.0]
    # the digits model gets NaN pixels as they are: a 200, the answer written back as JSON
    r = predict(server, "digits", content=b"[" + b",".join([b"NaN"] * 64) + b"]", headers=JSON)
    assert r.status_code == 200, r.text
    json.loads(r.content)


async def _burst(server, model: str, bodies: list) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(*(
            client.post(f"{server.inference}/predictions/{model}", json=b) for b in bodies
        ))


def test_one_bad_request_does_not_fail_its_batch(server):
    bodies = [{"i": i} for i in range(40)]
    bodies[7] = bodies[23] = {"boom": True}
    responses = asyncio.run(_burst(server, "echo", bodies))
    for i, r in enumerate(responses):
        if i in (7, 23):
            assert r.status_code == 500
        else:
            assert r.status_code == 200 and r.json()["echo"] == {"i": i}


def _batch_sizes(server, model: str) -> dict[str, float]:
    text = httpx.get(f"{server.metrics}/metrics").text
    labels = f'model_name="{model}",model_version="1.0"'
    pattern = rf"modelserve_batch_size_(count|sum){{{labels}}} (\S+)"
    return {m[0]: float(m[1]) for m in re.findall(pattern, text)}


def test_200_concurrent_requests_answered_correctly_and_batched(server):
    _, _, x_test, y_test = load_split()
    before = _batch_sizes(server, "digits")
    bodies = [x_test[i % len(x_test)].ravel().tolist() for i in range(200)]
    responses = asyncio.run(_burst(server, "digits", bodies))
    assert all(r.status_code == 200 for r in responses)
    correct = sum(r.json()["class"] == y_test[i % len(y_test)] for i, r in enumerate(responses))
    assert correct >= 195  # the model's own accuracy is ~99 %
    after = _batch_sizes(server, "digits")
    batches = after["count"] - before.get("count", 0)
    requests = after["sum"] - before.get("sum", 0)
    assert requests == 200
    assert requests / batches > 1.5, f"{requests} requests in {batches} batches"


def test_resnet_torchscript_and_onnx_serve_the_direct_models_answer(server, example_store):
    import zipfile

    import httpx as client

    for name in ("resnet", "resnet_onnx"):
        r = client.post(f"{server.management}/models",
                        params={"url": f"{name}.mar", "initial_workers": 1}, timeout=120)
        assert r.status_code == 200, r.text
    try:
        x = np.random.default_rng(3).random((3, 64, 64), dtype=np.float32)
        buf = io.BytesIO()
        np.save(buf, x)
        with zipfile.ZipFile(example_store / "resnet.mar") as zf:
            zf.extract("resnet.pt", example_store / "direct")
        net = torch.jit.load(str(example_store / "direct" / "resnet.pt")).eval()
        with torch.inference_mode():
            probs = torch.softmax(net(torch.from_numpy(x[None])), 1)[0]
        top = torch.topk(probs, 5)
        for name in ("resnet", "resnet_onnx"):
            r = predict(server, name, content=buf.getvalue(),
                        headers={"Content-Type": "application/x-npy"})
            assert r.status_code == 200, r.text
            answer = r.json()
            assert [a["class"] for a in answer] == top.indices.tolist()
            np.testing.assert_allclose([a["probability"] for a in answer],
                                       top.values.numpy(), rtol=1e-3, atol=1e-6)
        r = predict(server, "resnet", json=[0.0] * 10)
        assert r.status_code == 400 and "12288" in r.json()["message"]
    finally:
        for name in ("resnet", "resnet_onnx"):
            client.delete(f"{server.management}/models/{name}", timeout=60)


def test_response_over_max_response_size_is_500(isolated_server):
    isolated_server.extra_config = {"max_response_size": 2000}
    isolated_server.start()
    url = f"{isolated_server.inference}/predictions/echo"
    assert httpx.post(url, json={"small": 1}).status_code == 200
    r = httpx.post(url, json={"big": "x" * 5000})
    assert r.status_code == 500
    assert "max_response_size" in r.json()["message"]
    assert httpx.post(url, json={"small": 2}).status_code == 200


@pytest.mark.parametrize("access_log", [True, False])
def test_access_log_fields_only_when_the_access_log_is_on(access_log, caplog):
    """The inference route fills in the access log's model fields only when it is on; the
    middleware writes one entry at INFO and builds none when INFO is not logged."""
    import logging
    from types import SimpleNamespace

    from modelserve.config import Settings
    from modelserve.server.engine.jobs import Result
    from modelserve.server.transport.http.access_log import AccessLog
    from modelserve.server.transport.torchserve.inference import create_inference_app

    async def infer(*args):
        return Result(200, "application/json", b"{}", {}, batch_size=3)

    plane = SimpleNamespace(draining=False, infer=infer)
    app = create_inference_app(plane, Settings(access_log=access_log))  # type: ignore[arg-type]
    states: list[dict] = []

    async def probe(scope, receive, send):
        await app(scope, receive, send)
        states.append(dict(scope.get("state", {})))

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(AccessLog(probe) if access_log else probe)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/predictions/m/2.0", content=b"{}",
                                     headers={"x-request-id": "r-1"})

    with caplog.at_level(logging.INFO, logger="modelserve.access"):
        assert asyncio.run(post()).status_code == 200
    if not access_log:
        assert "access" not in states[0] and not caplog.records
        return
    assert states[0]["access"] == {"model": "m", "version": "2.0", "batch_size": 3}
    [record] = caplog.records
    entry = json.loads(record.getMessage())
    assert entry["request_id"] == "r-1" and entry["batch_size"] == 3 and entry["model"] == "m"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modelserve.access"):
        assert asyncio.run(post()).status_code == 200
    assert not caplog.records
