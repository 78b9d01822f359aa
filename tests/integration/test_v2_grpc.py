"""OIP v2 over gRPC (GRPCInferenceService), with tritonclient.grpc (sync and aio)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.test_v2_rest import DTYPES, SHAPES, sample, typed_array

PROTOS_REL = Path("modelserve/server/transport/v2/protos")
PROTOS = Path(__file__).parents[2] / PROTOS_REL


@pytest.fixture(scope="module")
def client(v2_server):
    c = grpcclient.InferenceServerClient(v2_server.grpc)
    yield c
    c.close()


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "modelserve" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1.0")
    with pytest.raises(InferenceServerException) as info:
        client.is_model_ready("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("model", ["digits", "digits_onnx", "resnet", "resnet_onnx"])
def test_model_metadata_and_config(client, model):
    meta = client.get_model_metadata(model, as_json=True)
    assert meta["name"] == model and meta["versions"] == ["1.0"]
    (inp,) = meta["inputs"]
    assert inp == {"name": "input", "datatype": "FP32",
                   "shape": [str(d) for d in [-1, *SHAPES[model]]]}  # int64 -> str in JSON
    config = client.get_model_config(model, as_json=True)["config"]
    assert config["max_batch_size"] == 8
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in config["input"][0]["dims"]] == SHAPES[model]


@pytest.mark.parametrize("model", ["digits", "digits_onnx", "resnet", "resnet_onnx"])
def test_infer_equals_the_direct_model(client, direct_models, model):
    x = sample(model, 2, seed=11)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput("output")],
                          request_id="g-1")
    response = result.get_response()
    assert response.id == "g-1" and response.model_name == model
    assert response.model_version == "1.0"
    np.testing.assert_allclose(result.as_numpy("output"), direct_models[model](x),
                               rtol=1e-4, atol=1e-4)


async def test_async_client_concurrent_requests(v2_server, direct_models):
    client = aiogrpcclient.InferenceServerClient(v2_server.grpc)
    try:
        assert await client.is_server_live()
        assert (await client.get_model_metadata("digits_onnx")).platform == "onnxruntime_onnx"
        batches = [sample("digits_onnx", 1 + i % 4, seed=i) for i in range(16)]

        async def one(x):
            inp = aiogrpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return (await client.infer("digits_onnx", [inp])).as_numpy("output")

        outs = await asyncio.gather(*(one(x) for x in batches))
        for x, y in zip(batches, outs):
            np.testing.assert_allclose(y, direct_models["digits_onnx"](x), rtol=1e-4, atol=1e-5)
    finally:
        await client.close()


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_every_datatype_round_trips(client, datatype):
    x = typed_array(datatype, (3, 2), seed=len(datatype) + 1)
    inp = grpcclient.InferInput("x", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    result = client.infer("identity", [inp], outputs=[grpcclient.InferRequestedOutput("x")],
                          parameters={"tag": "grpc"})
    got = result.as_numpy("x")
    assert got.shape == x.shape
    if datatype == "BYTES":
        assert [bytes(v) for v in got.ravel()] == list(x.ravel())
    else:
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, x)


def test_typed_contents_instead_of_raw_bytes(v2_server, direct_models):
    """A client that fills InferTensorContents (not raw_input_contents) works too."""
    x = sample("digits", 1, seed=21)
    with grpc.insecure_channel(v2_server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        tensor = service_pb2.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=list(x.shape),
            contents=service_pb2.InferTensorContents(fp32_contents=x.ravel().tolist()))
        response = stub.ModelInfer(service_pb2.ModelInferRequest(
            model_name="digits", inputs=[tensor]))
        y = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, 10)
        np.testing.assert_allclose(y, direct_models["digits"](x), rtol=1e-4, atol=1e-5)
        ints = service_pb2.ModelInferRequest.InferInputTensor(
            name="i", datatype="INT16", shape=[3],
            contents=service_pb2.InferTensorContents(int_contents=[1, -2, 300]))
        response = stub.ModelInfer(service_pb2.ModelInferRequest(
            model_name="identity", inputs=[ints],
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="i")]))
        assert np.frombuffer(response.raw_output_contents[0], "<i2").tolist() == [1, -2, 300]


@pytest.mark.parametrize(("model", "shape", "datatype", "output", "code", "message"), [
    ("nope", [1, 1, 8, 8], "FP32", "output", "NOT_FOUND", "Model not found: nope"),
    ("digits", [1, 1, 8, 9], "FP32", "output", "INVALID_ARGUMENT", "does not match"),
    ("digits", [1, 1, 8, 8], "FP64", "output", "INVALID_ARGUMENT", "expects FP32"),
    ("digits", [1, 1, 8, 8], "FP32", "nope", "INVALID_ARGUMENT", "unknown output 'nope'"),
])
def test_bad_requests_get_grpc_status_codes(client, model, shape, datatype, output, code,
                                            message):
    x = np.zeros(shape, dtype=DTYPES[datatype])
    inp = grpcclient.InferInput("input", shape, datatype)
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match=message) as info:
        client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(output)])
    assert info.value.status() == f"StatusCode.{code}"
    assert client.is_server_live()


def test_raw_size_mismatch_is_invalid_argument(v2_server):
    with grpc.insecure_channel(v2_server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        tensor = service_pb2.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=[1, 1, 8, 8])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(service_pb2.ModelInferRequest(
                model_name="digits", inputs=[tensor], raw_input_contents=[b"\x00" * 12]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "12 bytes of data" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:  # not served: UNIMPLEMENTED, not a crash
            stub.CudaSharedMemoryStatus(service_pb2.CudaSharedMemoryStatusRequest())
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_statistics_and_repository_index(client):
    stats = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    assert stats["name"] == "digits" and int(stats["inference_count"]) > 0
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["resnet"]["state"] == "READY"


def test_committed_stubs_match_the_proto(tmp_path):
    """`make protos` output equals the committed modules, and they import and describe the
    service tritonclient speaks (run apart: tritonclient registers the same proto names)."""
    subprocess.run([sys.executable, "-m", "modelserve.server.transport.v2.protos.generate",
                    str(tmp_path)], check=True, capture_output=True)
    for name in ("grpc_service_pb2.py", "grpc_service_pb2_grpc.py"):
        fresh = tmp_path / PROTOS_REL / name
        assert fresh.read_text() == (PROTOS / name).read_text(), f"{name} is stale: make protos"
    check = (
        "from modelserve.server.transport.v2.protos import grpc_service_pb2 as pb\n"
        "from modelserve.server.transport.v2.protos import grpc_service_pb2_grpc\n"
        "s = pb.DESCRIPTOR.services_by_name['GRPCInferenceService']\n"
        "print(pb.DESCRIPTOR.package, sorted(m.name for m in s.methods))\n"
    )
    out = subprocess.run([sys.executable, "-c", check], check=True, capture_output=True,
                         text=True).stdout
    assert out.startswith("inference [") and "'ModelInfer'" in out
    assert "'ModelStreamInfer'" in out


def test_messages_are_wire_compatible_with_tritonclient():
    """Every message and field of our proto parses as tritonclient's: same numbers, types."""
    check = (
        "from modelserve.server.transport.v2.protos import grpc_service_pb2 as pb\n"
        "for name, msg in pb.DESCRIPTOR.message_types_by_name.items():\n"
        "    todo = [msg]\n"
        "    while todo:\n"
        "        m = todo.pop(); todo.extend(m.nested_types)\n"
        "        for f in m.fields: print(m.full_name, f.name, f.number, f.type)\n"
    )
    ours = subprocess.run([sys.executable, "-c", check], check=True, capture_output=True,
                          text=True).stdout.splitlines()
    from tritonclient.grpc import model_config_pb2

    theirs = {}
    for module in (service_pb2, model_config_pb2):
        todo = list(module.DESCRIPTOR.message_types_by_name.values())
        while todo:
            m = todo.pop()
            todo.extend(m.nested_types)
            for f in m.fields:
                theirs[(m.full_name, f.name)] = (f.number, f.type)
    assert len(ours) > 80
    for line in ours:
        full_name, field, number, type_ = line.split()
        assert theirs.get((full_name, field)) == (int(number), int(type_)), line


@pytest.mark.parametrize("name", ["", "../../../etc/passwd", ".", "..", "-x", "a/b", "a" * 300])
def test_repository_load_refuses_names_that_are_not_model_names(v2_server, name):
    """Checked before the name touches the file system: no 500 from the registration's own
    check, and no way to tell whether some path exists (INVALID_ARGUMENT either way)."""
    with grpc.insecure_channel(v2_server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name=name))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert re.search("invalid model name|longer than 200", info.value.details())
