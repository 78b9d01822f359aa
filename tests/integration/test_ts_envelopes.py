"""TorchServe's ``service_envelope=kserve|kservev2`` from a config.properties: KServe v1 and v2
bodies unwrapped into the rows a handler written for KServe's TorchServe runtime expects, and
its results wrapped back, over real HTTP (/predictions, /v1/models/{m}:predict|:explain and
/v2/models/{m}/infer), with batches of several requests and malformed bodies."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import textwrap
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import Server, free_port

ARCHIVER = [sys.executable, "-m", "model_archiver.model_packaging"]

# Shaped like TorchServe's KServe MNIST example (examples/image_classifier/mnist/mnist_handler.py
# on VisionHandler): a row's data is an image as nested lists or base64 bytes; postprocess is
# argmax. The model sums each of the 8x8 image's rows: the class is the row with the largest sum.
MNIST_HANDLER = textwrap.dedent('''
    import base64

    import numpy as np
    import torch
    from ts.torch_handler.base_handler import BaseHandler


    class RowSumClassifier(BaseHandler):
        def preprocess(self, data):
            images = []
            for row in data:
                image = row.get("data") or row.get("body")
                if isinstance(image, str):
                    image = base64.b64decode(image)
                if isinstance(image, (bytes, bytearray)):
                    image = torch.from_numpy(np.frombuffer(image, dtype=np.float32).copy())
                else:
                    image = torch.FloatTensor(image)
                images.append(image.reshape(1, 8, 8))
            return torch.stack(images).to(self.device)

        def postprocess(self, data):
            return data.argmax(1).tolist()

        def explain_handle(self, data_preprocess, raw_data):
            return [image.sum(dim=-1).flatten().tolist() for image in data_preprocess]
''')

# Echoes its rows with the batch it ran in (call number, rows): KServe v1 instances as
# {"row", "n", "call"}; KServe v2 inputs as their data, the input named "batch" as [call, n],
# "names" as context.input_names. A {"sleep", "mark"} row (v2: a BYTES input "sleep" holding
# it as JSON) writes the mark file, then holds the worker; a {"fail": true} row raises.
ROWS_HANDLER = textwrap.dedent('''
    import json
    import time
    from pathlib import Path

    from ts.utils.util import PredictionException


    class RowsHandler:
        def initialize(self, context):
            self.calls = 0

        def _hold(self, spec):
            Path(spec["mark"]).write_text("running")
            time.sleep(spec["sleep"])

        def handle(self, data, context):
            self.calls += 1
            out = []
            for row in data:
                if isinstance(row, dict) and "datatype" in row:  # a KServe v2 input
                    if row["name"] == "sleep":
                        self._hold(json.loads(row["data"]))
                    if row["name"] == "batch":
                        out.append([self.calls, len(data)])
                    elif row["name"] == "names":
                        out.append(list(context.input_names))
                    else:
                        out.append(row["data"])
                    continue
                if isinstance(row, dict) and row.get("fail"):
                    raise PredictionException("asked to fail", 422)
                if isinstance(row, dict) and "sleep" in row:
                    self._hold(row)
                out.append({"row": row, "n": len(data), "call": self.calls})
            return out
''')


def _archive(src: Path, store: Path, name: str, handler: str, config: dict,
             serialized: Path | None = None) -> None:
    folder = src / name
    folder.mkdir()
    (folder / f"{name}_handler.py").write_text(handler)
    (folder / "model-config.yaml").write_text(yaml.safe_dump(
        {"minWorkers": 1, "maxWorkers": 1, "deviceType": "cpu", **config}))
    subprocess.run([
        *ARCHIVER, "--model-name", name, "--version", "1.0",
        "--handler", str(folder / f"{name}_handler.py"),
        *(["--serialized-file", str(serialized)] if serialized else []),
        "--config-file", str(folder / "model-config.yaml"),
        "--export-path", str(store), "--force",
    ], check=True, capture_output=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from modelserve.examples.build import export_torchscript

    src = tmp_path_factory.mktemp("envelope-src")
    store = tmp_path_factory.mktemp("envelope-store")
    linear = torch.nn.Linear(64, 10, bias=False)
    with torch.no_grad():
        weight = torch.zeros(10, 64)
        for row in range(8):
            weight[row, row * 8:row * 8 + 8] = 1.0
        linear.weight.copy_(weight)
    export_torchscript(torch.nn.Sequential(torch.nn.Flatten(), linear).eval(),
                       torch.zeros(1, 1, 8, 8), src / "rowsum.pt")
    _archive(src, store, "mnist", MNIST_HANDLER, {}, src / "rowsum.pt")
    _archive(src, store, "rows", ROWS_HANDLER, {"batchSize": 8, "maxBatchDelay": 1000})
    return store


def _server(root: Path, store: Path, envelope: str) -> Server:
    srv = Server(root, store, ["mnist.mar", "rows.mar"])
    props = root / "config.properties"
    props.write_text(f"service_envelope={envelope}\ngrpc_inference_port={free_port()}\n"
                     f"grpc_management_port={free_port()}\n")
    srv.extra_args = ["--ts-config", str(props)]
    return srv.start()


@pytest.fixture(scope="module")
def kserve(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = _server(tmp_path_factory.mktemp("kserve"), store, "kserve")
    yield srv
    assert not srv.stop()


@pytest.fixture(scope="module")
def kservev2(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = _server(tmp_path_factory.mktemp("kservev2"), store, "kservev2")
    yield srv
    assert not srv.stop()


def _image(row: int) -> np.ndarray:
    """An 8x8 image whose brightest row is ``row``: the class RowSumClassifier answers."""
    image = np.ones((8, 8), dtype=np.float32)
    image[row] = 5.0
    return image


async def _burst_while_held(held: tuple[str, dict], mark: Path,
                            requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    """Hold the worker with one request, then, once its handler runs, send ``requests`` at
    once: they queue behind it and the batcher puts them in batches of several."""
    async with httpx.AsyncClient(timeout=60) as client:
        holder = asyncio.create_task(client.post(held[0], json=held[1]))
        for _ in range(3000):
            if mark.exists() or holder.done():
                break
            await asyncio.sleep(0.02)
        assert mark.exists(), "the holding request never reached the handler"
        responses = await asyncio.gather(*(client.post(url, json=body)
                                           for url, body in requests))
        assert (await holder).status_code == 200
    return list(responses)


# -- kserve (KServe v1) ---------------------------------------------------------------------

def test_v1_predict_as_torchserves_kserve_envelope_answers(kserve):
    """The KServe MNIST example's request: instances of {"data": image}; the answer is the
    envelope's {"predictions": [...]}, not wrapped again by the v1 route."""
    images = [_image(3).tolist(), base64.b64encode(_image(6).tobytes()).decode()]
    body = {"instances": [{"data": image} for image in images]}
    r = httpx.post(f"{kserve.inference}/v1/models/mnist:predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"predictions": [3, 6]}
    # /predictions (the KServe wrapper's older path, and TorchServe's own) answers the same
    r = httpx.post(f"{kserve.inference}/predictions/mnist", json=body, timeout=60)
    assert r.status_code == 200 and r.json() == {"predictions": [3, 6]}
    assert "service_envelope" not in kserve.log()  # mapped, not "not supported"


def test_v1_explain_answers_explanations(kserve):
    body = {"instances": [{"data": _image(2).tolist()}]}
    r = httpx.post(f"{kserve.inference}/v1/models/mnist:explain", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"explanations": [[8.0, 8.0, 40.0, 8.0, 8.0, 8.0, 8.0, 8.0]]}
    r = httpx.post(f"{kserve.inference}/explanations/mnist", json=body, timeout=60)
    assert r.json() == {"explanations": [[8.0, 8.0, 40.0, 8.0, 8.0, 8.0, 8.0, 8.0]]}


def test_v1_batch_of_several_requests_each_gets_its_own_predictions(kserve, tmp_path):
    """Requests queued behind a busy worker run as one handler call on all their instances;
    each request gets back exactly its own instances' results."""
    url = f"{kserve.inference}/v1/models/rows:predict"
    mark = tmp_path / "held"
    bodies = [{"instances": [{"req": i, "k": k} for k in range(i % 3 + 1)]} for i in range(6)]
    responses = asyncio.run(_burst_while_held(
        (url, {"instances": [{"sleep": 2, "mark": str(mark)}]}), mark,
        [(url, body) for body in bodies]))
    calls: dict[int, list[int]] = defaultdict(list)
    for body, r in zip(bodies, responses):
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert [p["row"] for p in predictions] == body["instances"]
        assert len({(p["call"], p["n"]) for p in predictions}) == 1
        calls[predictions[0]["call"]].append(len(body["instances"]))
        assert predictions[0]["n"] >= len(body["instances"])
    for call, counts in calls.items():  # a call's rows are its requests' instances, no more
        n = {p["n"] for body, r in zip(bodies, responses)
             for p in r.json()["predictions"] if p["call"] == call}
        assert n == {sum(counts)}
    assert any(len(counts) > 1 for counts in calls.values()), calls


def test_v1_malformed_bodies_are_400_and_a_failing_row_fails_its_request_only(kserve, tmp_path):
    r = httpx.post(f"{kserve.inference}/v1/models/rows:predict", json={"inputs": [1]})
    assert r.status_code == 400 and "instances" in r.json()["error"]
    r = httpx.post(f"{kserve.inference}/predictions/rows", json={"instances": []})
    assert r.status_code == 400 and "non-empty" in r.json()["message"]
    r = httpx.post(f"{kserve.inference}/predictions/rows", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    url = f"{kserve.inference}/predictions/rows"
    mark = tmp_path / "held"
    bodies = [{"instances": [{"i": 0}]}, {"instances": [{"fail": True}]}, {"nope": 1},
              {"instances": [{"i": 3}, {"i": 4}]}]
    responses = asyncio.run(_burst_while_held(
        (url, {"instances": [{"sleep": 1, "mark": str(mark)}]}), mark,
        [(url, body) for body in bodies]))
    assert [r.status_code for r in responses] == [200, 422, 400, 200]
    assert [p["row"] for p in responses[3].json()["predictions"]] == [{"i": 3}, {"i": 4}]
    assert responses[1].json()["message"] == "asked to fail"


# -- kservev2 (KServe v2 / OIP) -------------------------------------------------------------

MNIST_V2 = {"id": "d3b15cad-50a2-4eaf-80ce-8b0a428bd298",
            "inputs": [{"name": "input-0", "shape": [1, 8, 8], "datatype": "FP32",
                        "data": _image(5).reshape(-1).tolist()}]}


def test_v2_body_on_predictions_as_torchserves_kservev2_envelope_answers(kservev2):
    """mnist_v2_tensor.json's shape: the answer is exactly the envelope's JSON, outputs named
    after their inputs, flattened, with numpy's datatype."""
    r = httpx.post(f"{kservev2.inference}/predictions/mnist", json=MNIST_V2, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": MNIST_V2["id"], "model_name": "mnist", "model_version": "1.0",
                        "outputs": [{"name": "input-0", "datatype": "INT64", "data": [5],
                                     "shape": [1]}]}
    # no id in the body: the request's own id, as TorchServe's envelope does
    r = httpx.post(f"{kservev2.inference}/predictions/mnist",
                   json={"inputs": MNIST_V2["inputs"]}, timeout=60)
    assert r.status_code == 200 and r.json()["id"]


def test_v2_infer_route_runs_the_same_handler_through_the_envelope(kservev2):
    """/v2/models/{m}/infer (the OIP transport, as KServe's v2 wrapper calls it): a BYTES
    input reaches the handler as the string JSON carried (mnist_v2_bytes.json's shape)."""
    r = httpx.post(f"{kservev2.inference}/v2/models/mnist/infer", json=MNIST_V2, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": MNIST_V2["id"], "model_name": "mnist", "model_version": "1.0",
                        "outputs": [{"name": "input-0", "datatype": "INT64", "shape": [1],
                                     "data": [5]}]}
    image = base64.b64encode(_image(1).tobytes()).decode()
    body = {"inputs": [{"name": "input-0", "shape": [1], "datatype": "BYTES", "data": [image]}]}
    r = httpx.post(f"{kservev2.inference}/v2/models/mnist/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == [{"name": "input-0", "datatype": "INT64", "shape": [1],
                                    "data": [1]}]


def test_v2_rows_outputs_and_context_input_names(kservev2):
    body = {"id": "x1", "inputs": [
        {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [1.5, 2.5, 3.5, 4.5]},
        {"name": "b", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]},
        {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["hello"]},
        {"name": "names", "shape": [1], "datatype": "BYTES", "data": ["?"]}]}
    r = httpx.post(f"{kservev2.inference}/predictions/rows", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": "x1", "model_name": "rows", "model_version": "1.0", "outputs": [
        {"name": "a", "datatype": "FP64", "data": [1.5, 2.5, 3.5, 4.5], "shape": [4]},
        {"name": "b", "datatype": "INT64", "data": [1, 2, 3], "shape": [3]},
        {"name": "s", "datatype": "BYTES", "data": ["hello"], "shape": [1]},
        {"name": "names", "datatype": "BYTES", "data": ["a", "b", "s", "names"], "shape": [4]},
    ]}


def test_v2_batch_of_several_requests_each_gets_its_own_outputs(kservev2, tmp_path):
    url = f"{kservev2.inference}/predictions/rows"
    mark = tmp_path / "held"
    hold = {"inputs": [{"name": "sleep", "shape": [1], "datatype": "BYTES",
                        "data": [json.dumps({"sleep": 2, "mark": str(mark)})]}]}
    bodies = [{"id": f"r{i}", "inputs": [
        *({"name": f"x{k}", "shape": [1], "datatype": "INT64", "data": [i * 10 + k]}
          for k in range(i % 3 + 1)),
        {"name": "batch", "shape": [1], "datatype": "INT64", "data": [0]}]} for i in range(6)]
    responses = asyncio.run(_burst_while_held((url, hold), mark,
                                              [(url, body) for body in bodies]))
    calls: dict[int, list[int]] = defaultdict(list)
    for i, (body, r) in enumerate(zip(bodies, responses)):
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["id"] == f"r{i}"
        *echo, batch = doc["outputs"]
        assert echo == [{"name": t["name"], "datatype": "INT64", "data": t["data"],
                         "shape": [1]} for t in body["inputs"][:-1]]
        call, n = batch["data"]
        calls[call].append(len(body["inputs"]))
        assert n >= len(body["inputs"])
    for call, counts in calls.items():
        n = {r.json()["outputs"][-1]["data"][1] for r in responses
             if r.json()["outputs"][-1]["data"][0] == call}
        assert n == {sum(counts)}
    assert any(len(counts) > 1 for counts in calls.values()), calls


@pytest.mark.parametrize("body, message", [
    ({"instances": [1]}, "inputs"),
    ({"inputs": []}, "inputs"),
    ({"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}, "shape"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": []}]}, "BYTES"),
    ({"inputs": [{"name": "a", "datatype": "FP32", "data": [1]}]}, "shape"),
    ({"id": 7, "inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]},
     "id"),
])
def test_v2_malformed_envelope_bodies_are_400(kservev2, body, message):
    r = httpx.post(f"{kservev2.inference}/predictions/rows", json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]
