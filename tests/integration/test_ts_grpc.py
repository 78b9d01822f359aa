"""TorchServe's gRPC APIs, called the way TorchServe's own clients call them.

The client modules are generated here, at test time, with grpcio-tools from TorchServe's
unmodified ``inference.proto`` and ``management.proto`` (committed under
modelserve/server/transport/torchserve/protos/), as TorchServe's docs/grpc_api.md tells its
users to, and every RPC is called over real loopback against real workers. The test process
never imports the committed ``*_pb2`` modules: protobuf's descriptor pool must not hold the
same TorchServe symbols twice. Each test names the TorchServe 0.12.0 source it follows
(frontend/server/src/main/java/org/pytorch/serve/{grpcimpl/InferenceImpl, grpcimpl/
ManagementImpl, grpcimpl/GRPCInterceptor, job/GRPCJob, util/GRPCUtils}.java and
test/pytest/test_gRPC_*.py).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import grpc
import httpx
import pytest

from tests.conftest import (
    CONTINUOUS_HANDLER,
    STATEFUL_HANDLER,
    Server,
    free_port,
    handler_archive,
)

REPO = Path(__file__).resolve().parents[2]
PROTOS_REL = Path("modelserve/server/transport/torchserve/protos")
PROTOS = REPO / PROTOS_REL
INTERNAL_SERVER = "org.pytorch.serve.http.InternalServerException"
NOT_FOUND = "org.pytorch.serve.archive.model.ModelNotFoundException"
BAD_REQUEST = "org.pytorch.serve.http.BadRequestException"
DENIED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"

# Echoes its input map (raw bytes as latin-1 text), the sequence id it was sent with, and its
# version; fails on request: "boom" raises (the worker's 500), "code" raises with that
# error_code (TorchServe's PredictionException). describe_handle for customized descriptions.
ECHO_HANDLER = textwrap.dedent('''
    import json


    class EchoHandler:
        def initialize(self, context):
            self.version = context.manifest["model"]["modelVersion"]

        def handle(self, data, context):
            if context.get_request_header(0, "describe") == "True":
                return [json.dumps({"kind": "echo", "version": self.version})]
            out = []
            for idx, row in enumerate(data):
                if "boom" in row:
                    raise RuntimeError("kaboom")
                if "code" in row:
                    refusal = RuntimeError("refused on request")
                    refusal.error_code = int(row["code"])
                    raise refusal
                out.append({
                    "fields": {k: v.decode("latin-1") for k, v in row.items()},
                    "types": sorted({type(v).__name__ for v in row.values()}),
                    "sequence": context.get_sequence_id(idx),
                    "version": self.version,
                })
            return out
''')

# TorchServe's streaming form, unmodified: three intermediate responses, then the last one;
# "fail" raises after the first chunk, "slow" sends 100 chunks 0.1 s apart.
STREAM_HANDLER = textwrap.dedent('''
    import time

    from ts.protocol.otf_message_handler import send_intermediate_predict_response


    class StreamHandler:
        def initialize(self, context):
            pass

        def handle(self, data, context):
            texts = [(row.get("data") or b"").decode() for row in data]
            seqs = [context.get_sequence_id(i) or "" for i in range(len(data))]
            for i in range(100 if "slow" in texts else 3):
                if i == 1 and "fail" in texts:
                    raise RuntimeError("failed after the first chunk")
                if i and "slow" in texts:
                    time.sleep(0.1)
                send_intermediate_predict_response(
                    [f"{t}:{i}:{s}" for t, s in zip(texts, seqs)], context.request_ids,
                    "Intermediate Prediction success", 200, context)
            return [f"{t}:done:{s}" for t, s in zip(texts, seqs)]
''')


def generate_stubs(out: Path) -> SimpleNamespace:
    """``python -m grpc_tools.protoc`` on TorchServe's .proto files, as its docs say; the
    modules imported from ``out``."""
    from grpc_tools import protoc

    committed = [m for m in sys.modules if m.startswith(f"{'.'.join(PROTOS_REL.parts)}.")
                 and m.endswith("_pb2")]
    assert not committed, (f"this process imported {committed}: TorchServe's symbols would be "
                           "registered twice; import them in a subprocess")
    well_known = Path(protoc.__file__).with_name("_proto")
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTOS}", f"-I{well_known}",
                        f"--python_out={out}", f"--grpc_python_out={out}",
                        str(PROTOS / "inference.proto"), str(PROTOS / "management.proto"),
                        str(PROTOS / "google/rpc/status.proto")])
    assert code == 0
    sys.path.insert(0, str(out))
    try:
        names = ("inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc")
        return SimpleNamespace(**{n: importlib.import_module(n) for n in names})
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module")
def ts(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return generate_stubs(tmp_path_factory.mktemp("ts-grpc-stubs"))


@pytest.fixture(scope="module")
def grpc_store(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits, echo (1.0, and echo-2.0.mar: its version 2.0), stream and stateful (two
    workers, sequence batching)."""
    store = tmp_path_factory.mktemp("ts-grpc-store")
    shutil.copy(model_store / "digits.mar", store / "digits.mar")
    handler_archive(tmp_path_factory.mktemp("src"), store, "echo", ECHO_HANDLER, {})
    handler_archive(tmp_path_factory.mktemp("src"), store, "stream", STREAM_HANDLER, {})
    handler_archive(tmp_path_factory.mktemp("src"), store, "stateful", STATEFUL_HANDLER,
                    {"minWorkers": 2, "maxWorkers": 2, "batchSize": 4,
                     "sequenceMaxIdleMSec": 5000, "maxSequenceJobQueueSize": 10,
                     "sequenceBatching": True})
    handler_archive(tmp_path_factory.mktemp("src"), store, "stateful1", STATEFUL_HANDLER,
                    {"batchSize": 4, "sequenceMaxIdleMSec": 5000, "sequenceBatching": True})
    handler_archive(tmp_path_factory.mktemp("src"), store, "generator", CONTINUOUS_HANDLER,
                    {"batchSize": 4, "continuousBatching": True})
    v2 = tmp_path_factory.mktemp("echo-v2")
    handler_archive(tmp_path_factory.mktemp("src"), v2, "echo", ECHO_HANDLER, {}, version="2.0")
    shutil.move(v2 / "echo.mar", store / "echo-2.0.mar")
    return store


class Stubs(SimpleNamespace):
    inference: object
    management: object


def _stubs(ts: SimpleNamespace, srv: Server) -> Iterator[Stubs]:
    inference = grpc.insecure_channel(f"127.0.0.1:{srv.ts_ports[0]}")
    management = grpc.insecure_channel(f"127.0.0.1:{srv.ts_ports[1]}")
    try:
        yield Stubs(inference=ts.inference_pb2_grpc.InferenceAPIsServiceStub(inference),
                    management=ts.management_pb2_grpc.ManagementAPIsServiceStub(management))
    finally:
        inference.close()
        management.close()


@pytest.fixture(scope="module")
def srv(grpc_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("ts-grpc-server"), grpc_store,
                    ["echo=echo.mar", "stream=stream.mar", "digits=digits.mar",
                     "stateful=stateful.mar", "stateful1=stateful1.mar",
                     "generator=generator.mar"])
    # in server.ports, so that a start retried on new ports moves these too
    server.ports.update(ts_inference=free_port(), ts_management=free_port())
    server.extra_config = {"grpc_torchserve_inference_port": server.ports["ts_inference"],
                           "grpc_torchserve_management_port": server.ports["ts_management"]}
    server.start()
    server.ts_ports = (server.ports["ts_inference"],  # type: ignore[attr-defined]
                       server.ports["ts_management"])
    yield server
    assert not server.stop()


@pytest.fixture(scope="module")
def stubs(ts: SimpleNamespace, srv: Server) -> Iterator[Stubs]:
    yield from _stubs(ts, srv)


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kwargs)
        if isinstance(result, Iterator):
            list(result)  # a stream: the error comes while reading it
    return info.value


def request(ts: SimpleNamespace, model: str, **inputs: bytes) -> object:
    return ts.inference_pb2.PredictionsRequest(model_name=model, input=inputs)


# -- the committed files -------------------------------------------------------------------

# git hash-object of TorchServe v0.12.0's frontend/server/src/main/resources/proto/*.proto
TORCHSERVE_BLOBS = {"inference.proto": "3ca8ff18e932d5d41be39593023996daf05c6d18",
                    "management.proto": "8a491bbe96665985e37dd227602bd09cfcb6ab02"}


def test_committed_protos_are_torchserves_and_stubs_are_fresh(tmp_path: Path):
    """The .proto files are TorchServe's, byte for byte; `make protos` output equals the
    committed modules, which import and describe TorchServe's services (run apart: this
    process holds the test-time modules of the same protos)."""
    for name, blob in TORCHSERVE_BLOBS.items():
        data = (PROTOS / name).read_bytes()
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob, name
    subprocess.run([sys.executable, "-m", "modelserve.server.transport.torchserve.protos.generate",
                    str(tmp_path)], check=True, capture_output=True)
    for name in ("inference_pb2.py", "inference_pb2_grpc.py", "management_pb2.py",
                 "management_pb2_grpc.py", "status_pb2.py"):
        fresh = tmp_path / PROTOS_REL / name
        assert fresh.read_text() == (PROTOS / name).read_text(), f"{name} is stale: make protos"
    check = (
        "from modelserve.server.transport.torchserve.protos import inference_pb2 as i\n"
        "from modelserve.server.transport.torchserve.protos import management_pb2 as m\n"
        "from modelserve.server.transport.torchserve.protos import inference_pb2_grpc\n"
        "from modelserve.server.transport.torchserve.protos import management_pb2_grpc\n"
        "for pb, name in ((i, 'InferenceAPIsService'), (m, 'ManagementAPIsService')):\n"
        "    s = pb.DESCRIPTOR.services_by_name[name]\n"
        "    print(s.full_name, sorted(x.name for x in s.methods))\n"
    )
    out = subprocess.run([sys.executable, "-c", check], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert out == [
        "org.pytorch.serve.grpc.inference.InferenceAPIsService ['Ping', 'Predictions', "
        "'StreamPredictions', 'StreamPredictions2']",
        "org.pytorch.serve.grpc.management.ManagementAPIsService ['DescribeModel', "
        "'ListModels', 'RegisterModel', 'ScaleWorker', 'SetDefault', 'UnregisterModel']",
    ]


# -- inference: InferenceAPIsService --------------------------------------------------------


def test_ping_is_the_health_json(ts, stubs):
    """InferenceImpl.ping: StatusResponse through GSON_PRETTY_EXPOSED."""
    from google.protobuf import empty_pb2

    answer = stubs.inference.Ping(empty_pb2.Empty())
    assert answer.health == '{\n  "status": "Healthy"\n}'


def test_predictions_hand_the_input_map_to_the_handler(ts, stubs):
    """InferenceImpl.prediction: each input map entry is an InputParameter of raw bytes
    (test_gRPC_inference_api.py sends input={"data": file bytes})."""
    answer = stubs.inference.Predictions(request(ts, "echo", data=b"hello", raw=b"\x00\xff\r\n"))
    body = json.loads(answer.prediction)
    assert body["fields"] == {"data": "hello", "raw": "\x00\xff\r\n"}
    assert body["types"] == ["bytes"] and body["version"] == "1.0"
    versioned = ts.inference_pb2.PredictionsRequest(model_name="echo", model_version="1.0",
                                                    input={"data": b"x"})
    assert json.loads(stubs.inference.Predictions(versioned).prediction)["fields"] == {
        "data": "x"}


def test_predictions_answer_what_rest_answers(ts, stubs, srv):
    """GRPCJob.response (PREDICT): the worker's body in ``prediction``."""
    sample = json.dumps([0.0] * 64).encode()
    answer = stubs.inference.Predictions(request(ts, "digits", data=sample))
    rest = httpx.post(f"{srv.inference}/predictions/digits", content=sample,
                      headers={"content-type": "application/json"})
    assert rest.status_code == 200
    assert json.loads(answer.prediction) == rest.json()


@pytest.mark.parametrize("model, version, inputs, code, details", [
    # InferenceImpl.prediction's own checks: INTERNAL, with its BadRequestException.() tag
    ("", "", {"data": b"x"}, grpc.StatusCode.INTERNAL,
     "Parameter model_name is required.\nBadRequestException.()"),
    ("nope", "", {"data": b"x"}, grpc.StatusCode.INTERNAL, f"Model not found: nope\n{NOT_FOUND}"),
    ("echo", "9.9", {"data": b"x"}, grpc.StatusCode.INTERNAL,
     f"Model version 9.9 does not exist for model echo\n{NOT_FOUND}"),
    # GRPCJob.sendError: the worker's status through GRPCUtils.getGRPCStatusCode
    ("echo", "", {"boom": b"1"}, grpc.StatusCode.INTERNAL,
     f"Prediction failed: RuntimeError: kaboom\n{INTERNAL_SERVER}"),
    ("echo", "", {"code": b"400"}, grpc.StatusCode.INVALID_ARGUMENT,
     f"refused on request\n{INTERNAL_SERVER}"),
    ("echo", "", {"code": b"429"}, grpc.StatusCode.RESOURCE_EXHAUSTED,
     f"refused on request\n{INTERNAL_SERVER}"),
    ("echo", "", {"code": b"503"}, grpc.StatusCode.UNAVAILABLE,
     f"refused on request\n{INTERNAL_SERVER}"),
    ("echo", "", {"code": b"418"}, grpc.StatusCode.FAILED_PRECONDITION,
     f"refused on request\n{INTERNAL_SERVER}"),
])
def test_prediction_errors(ts, stubs, model, version, inputs, code, details):
    req = ts.inference_pb2.PredictionsRequest(model_name=model, model_version=version,
                                             input=inputs)
    for call in (stubs.inference.Predictions, stubs.inference.StreamPredictions):
        error = rpc_error(call, req)
        assert (error.code(), error.details()) == (code, details), call


def test_stream_predictions_send_each_chunk(ts, stubs):
    """GRPCJob.response (STREAMPREDICT): one PredictionResponse per intermediate response,
    the last completes the call (test_gRPC_inference_api.py test_inference_stream_apis)."""
    chunks = [r.prediction.decode() for r in
              stubs.inference.StreamPredictions(request(ts, "stream", data=b"hello"))]
    assert chunks == ["hello:0:", "hello:1:", "hello:2:", "hello:done:"]
    # a handler that does not stream answers once
    [only] = stubs.inference.StreamPredictions(request(ts, "echo", data=b"one"))
    assert json.loads(only.prediction)["fields"] == {"data": "one"}


def test_stream_predictions_of_a_continuous_batch_send_each_step(ts, stubs):
    """continuousBatching: each step's answer (ts_stream_next: true) is one message, as
    GRPCJob.response sends each of a continuous batch's responses."""
    body = json.dumps({"prompt": "a", "max_new_tokens": 3}).encode()
    steps = [json.loads(r.prediction) for r in
             stubs.inference.StreamPredictions(request(ts, "generator", body=body))]
    assert [step["token"] for step in steps] == ["b", "c", "d"]


def test_stream_error_after_the_first_chunk_ends_the_call(ts, stubs):
    """GRPCJob.sendError after a response: the client has the chunks sent, then the status."""
    got = []
    with pytest.raises(grpc.RpcError) as info:
        for r in stubs.inference.StreamPredictions(request(ts, "stream", data=b"fail")):
            got.append(r.prediction.decode())
    assert got == ["fail:0:"]
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details().endswith(f"failed after the first chunk\n{INTERNAL_SERVER}")


def test_predictions_of_a_streaming_handler_is_its_first_chunk(ts, stubs):
    """GRPCJob.response (PREDICT) completes the call on the first response it gets."""
    answer = stubs.inference.Predictions(request(ts, "stream", data=b"hi"))
    assert answer.prediction == b"hi:0:"


def test_work_stops_when_its_answer_is_no_longer_wanted(ts, stubs):
    """GRPCJob.cancelHandler drops what a cancelled call would get; here the worker also
    stops making it: the model's one worker is free at once for the next request, after a
    StreamPredictions the client cancels and after a Predictions (its first chunk only)."""
    call = stubs.inference.StreamPredictions(request(ts, "stream", data=b"slow"))
    assert next(call).prediction == b"slow:0:"
    call.cancel()
    assert stubs.inference.Predictions(request(ts, "stream", data=b"slow")).prediction == \
        b"slow:0:"
    start = time.monotonic()
    answer = stubs.inference.Predictions(request(ts, "stream", data=b"next"), timeout=30)
    assert answer.prediction == b"next:0:"
    assert time.monotonic() - start < 5  # not the 10 s the slow streams would have taken


def _sequence(ts, stubs, sequence: str, words: list[str], out: dict) -> None:
    requests = [ts.inference_pb2.PredictionsRequest(model_name="stream", input={"data": w.encode()},
                                                   sequence_id=sequence) for w in words]
    out[sequence] = [(r.sequence_id, r.prediction.decode())
                     for r in stubs.inference.StreamPredictions2(iter(requests))]


def test_stream_predictions2_answers_each_request_in_order(ts, stubs):
    """InferenceImpl.streamPredictions2 (test_gRPC_inference_api.py test_inference_stream2_apis:
    two sequences at once, three requests each): every chunk of a request, in the order the
    requests were sent; the handler reads the sequence id (ts_request_sequence_id)."""
    out: dict = {}
    threads = [threading.Thread(target=_sequence, args=(ts, stubs, seq, ["1", "2", "3"], out))
               for seq in ("seq_0", "seq_1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for seq in ("seq_0", "seq_1"):
        assert out[seq] == [(seq, f"{w}:{step}:{seq}") for w in "123"
                            for step in ("0", "1", "2", "done")]


def test_stream_predictions2_of_a_stateful_model_stay_on_one_worker(ts, stubs):
    """Sequence batching (SequenceBatching.java) behind StreamPredictions2: two sequences at
    once on a two-worker stateful model; each answer is its sequence's running sum, which
    only the worker holding that sequence knows."""
    def stream(sequence: str, numbers: list[int]) -> list[tuple[str, str]]:
        requests = [ts.inference_pb2.PredictionsRequest(
            model_name="stateful", input={"data": str(n).encode()}, sequence_id=sequence)
            for n in numbers]
        return [(r.sequence_id, r.prediction.decode())
                for r in stubs.inference.StreamPredictions2(iter(requests), timeout=60)]

    with ThreadPoolExecutor(2) as pool:
        s0 = pool.submit(stream, "s0", [1, 3, 5, 7, 9])
        s1 = pool.submit(stream, "s1", [2, 4, 6, 8, 10])
    assert s0.result() == [("s0", s) for s in ("1", "4", "9", "16", "25")]
    assert s1.result() == [("s1", s) for s in ("2", "6", "12", "20", "30")]


def test_stream_predictions2_sends_each_request_on_as_it_comes(ts, stubs):
    """InferenceImpl.streamPredictions2's onNext adds each request's job at once: while the
    first (sequence x) runs on the one worker, the next two (sequences y and z) are already
    queued, and leave together in one batch."""
    requests = [ts.inference_pb2.PredictionsRequest(
        model_name="stateful1", input={"data": body.encode()}, sequence_id=sequence)
        for sequence, body in (("x", "sleep 0.5"), ("y", "?"), ("z", "?"))]
    answers = [(r.sequence_id, r.prediction.decode())
               for r in stubs.inference.StreamPredictions2(iter(requests), timeout=30)]
    assert answers == [("x", "slept"), ("y", "2"), ("z", "2")]


def test_stream_predictions2_errors_are_responses_and_the_stream_goes_on(ts, stubs):
    """InferenceImpl.sendErrorResponse (STREAMPREDICT2) and GRPCJob.sendError: a response
    whose ``status`` is a google.rpc.Status (code, message, ErrorInfo{reason}) in place of
    the prediction; the requests after it are answered."""
    pb2 = ts.inference_pb2
    requests = [
        pb2.PredictionsRequest(model_name="stream", input={"data": b"a"}),  # no sequence_id
        pb2.PredictionsRequest(model_name="nope", input={"data": b"b"}, sequence_id="s"),
        pb2.PredictionsRequest(model_name="echo", input={"boom": b"1"}, sequence_id="s"),
        pb2.PredictionsRequest(model_name="echo", input={"data": b"c"}, sequence_id="s"),
    ]
    responses = list(stubs.inference.StreamPredictions2(iter(requests)))
    errors = [(r.status.code, r.status.message, r.status.details[0]) for r in responses[:3]]
    for r in responses[:3]:
        assert r.HasField("status") and r.prediction == b""
    expected = [
        (13, "Parameter sequenceId is required.", "BadRequestException.()"),
        (13, "Model not found: nope", NOT_FOUND),
        (13, "Prediction failed: RuntimeError: kaboom", INTERNAL_SERVER),
    ]
    for (code, message, detail), (want_code, want_message, reason) in zip(errors, expected):
        assert (code, message) == (want_code, want_message)
        assert detail.type_url == "type.googleapis.com/google.rpc.ErrorInfo"
        assert detail.value == b"\x0a" + bytes([len(reason)]) + reason.encode()  # reason = 1
    last = responses[3]
    assert not last.HasField("status") and last.sequence_id == "s"
    assert json.loads(last.prediction)["sequence"] == "s"
    assert len(responses) == 4


# -- management: ManagementAPIsService ------------------------------------------------------


def test_list_models_pages_as_torchserve(ts, stubs):
    """ManagementImpl.listModels -> ApiUtils.getModelList: sorted names, Gson's JSON with
    nextPageToken first; limit 0 (not given) is the proto's documented 100."""
    pb2 = ts.management_pb2
    everything = stubs.management.ListModels(pb2.ListModelsRequest())
    assert everything.msg.startswith('{\n  "models": [\n    {\n      "modelName": ')
    names = [m["modelName"] for m in json.loads(everything.msg)["models"]]
    assert names[:1] == ["digits"] and names == sorted(names) and "echo" in names
    first = stubs.management.ListModels(pb2.ListModelsRequest(limit=1))
    assert first.msg.startswith('{\n  "nextPageToken": "1",\n  "models": [')
    second = json.loads(stubs.management.ListModels(
        pb2.ListModelsRequest(limit=1, next_page_token=1)).msg)
    assert [m["modelName"] for m in second["models"]] == names[1:2]


def test_describe_model(ts, stubs):
    """ManagementImpl.describeModel: the describe JSON; customized asks the handler
    (GRPCJob.response DESCRIBE); an unknown model is NOT_FOUND, with the exception class."""
    pb2 = ts.management_pb2
    [echo] = json.loads(stubs.management.DescribeModel(
        pb2.DescribeModelRequest(model_name="echo")).msg)
    assert (echo["modelName"], echo["modelVersion"]) == ("echo", "1.0")
    assert [w["status"] for w in echo["workers"]] == ["READY"]
    [custom] = json.loads(stubs.management.DescribeModel(
        pb2.DescribeModelRequest(model_name="echo", customized=True)).msg)
    assert json.loads(custom["customizedMetadata"]) == {"kind": "echo", "version": "1.0"}
    for req in (pb2.DescribeModelRequest(model_name="nope"),
                pb2.DescribeModelRequest(model_name="echo", model_version="9.9")):
        error = rpc_error(stubs.management.DescribeModel, req)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details().endswith(f"\n{NOT_FOUND}")
    assert rpc_error(stubs.management.DescribeModel, pb2.DescribeModelRequest(
        model_name="nope", customized=True)).code() == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("fields, code, details", [
    # RegisterModelRequest(grpc): an empty url is no url (BadRequestException)
    ({}, grpc.StatusCode.INVALID_ARGUMENT, f"Parameter url is required.\n{BAD_REQUEST}"),
    ({"url": "missing.mar"}, grpc.StatusCode.NOT_FOUND, None),
    ({"url": "echo.mar", "model_name": "bad name!"}, grpc.StatusCode.INVALID_ARGUMENT, None),
    # ModelArchive.downloadModel: a ".." in the URL, before allowed_urls are asked
    # (test_gRPC_allowed_urls.py test_gRPC_allowed_urls_relative_path)
    ({"url": "https://example.com/mar_files/../mar_files/echo.mar"}, grpc.StatusCode.NOT_FOUND,
     "Relative path is not allowed in url: https://example.com/mar_files/../mar_files/echo.mar"
     f"\n{NOT_FOUND}"),
    ({"url": "file:///tmp/../echo.mar"}, grpc.StatusCode.NOT_FOUND,
     f"Relative path is not allowed in url: file:///tmp/../echo.mar\n{NOT_FOUND}"),
])
def test_register_model_errors(ts, stubs, fields, code, details):
    """ManagementImpl.registerModel's catches: BadRequest/ModelException INVALID_ARGUMENT,
    ModelNotFoundException NOT_FOUND."""
    error = rpc_error(stubs.management.RegisterModel,
                      ts.management_pb2.RegisterModelRequest(**fields))
    assert error.code() == code
    if details is not None:
        assert error.details() == details


def test_management_lifecycle(ts, stubs):
    """test_gRPC_management_apis.py's sequence on one model: register a second version,
    scale it, make it the default, unregister the first; each success message and error
    status as ManagementImpl answers (GRPCUtils for what ApiUtils returns)."""
    pb2, m = ts.management_pb2, stubs.management
    registered = m.RegisterModel(pb2.RegisterModelRequest(
        url="echo-2.0.mar", initial_workers=1, synchronous=True, batch_size=0))
    assert registered.msg == 'Model "echo" Version: 2.0 registered with 1 initial workers'
    again = rpc_error(m.RegisterModel, pb2.RegisterModelRequest(url="echo-2.0.mar"))
    assert again.code() == grpc.StatusCode.ABORTED  # 409 through GRPCUtils
    assert again.details() == ("Model version 2.0 is already registered for model echo\n"
                               "org.pytorch.serve.http.ConflictStatusException")
    # ScaleWorker: min_worker 0 is "not given" (1); max_worker < min_worker is a 400
    scaled = m.ScaleWorker(pb2.ScaleWorkerRequest(model_name="echo", model_version="2.0",
                                                  min_worker=2, synchronous=True))
    assert scaled.msg == "Workers scaled to 2 for model: echo, version: 2.0"
    accepted = m.ScaleWorker(pb2.ScaleWorkerRequest(model_name="echo", model_version="2.0"))
    assert accepted.msg == "Processing worker updates..."
    for req, code in ((pb2.ScaleWorkerRequest(model_name="echo", min_worker=2, max_worker=1),
                       grpc.StatusCode.INVALID_ARGUMENT),
                      (pb2.ScaleWorkerRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND),
                      (pb2.ScaleWorkerRequest(model_name="echo", model_version="9.9"),
                       grpc.StatusCode.NOT_FOUND)):
        assert rpc_error(m.ScaleWorker, req).code() == code
    assert rpc_error(m.ScaleWorker, pb2.ScaleWorkerRequest(
        model_name="echo", min_worker=2, max_worker=1)).details() == (
        f"max_worker cannot be less than min_worker.\n{BAD_REQUEST}")
    # SetDefault
    made = m.SetDefault(pb2.SetDefaultRequest(model_name="echo", model_version="2.0"))
    assert made.msg == 'Default version successfully updated for model "echo" to "2.0"'
    for req in (pb2.SetDefaultRequest(model_name="echo", model_version="9.9"),
                pb2.SetDefaultRequest(model_name="nope", model_version="1.0")):
        assert rpc_error(m.SetDefault, req).code() == grpc.StatusCode.NOT_FOUND
    [described] = json.loads(m.DescribeModel(pb2.DescribeModelRequest(model_name="echo")).msg)
    assert described["modelVersion"] == "2.0"
    both = json.loads(m.DescribeModel(pb2.DescribeModelRequest(
        model_name="echo", model_version="all")).msg)
    assert sorted(d["modelVersion"] for d in both) == ["1.0", "2.0"]
    # UnregisterModel
    for req, code, details in (
            (pb2.UnregisterModelRequest(), grpc.StatusCode.INVALID_ARGUMENT,
             f"Parameter url is required.\n{BAD_REQUEST}"),
            (pb2.UnregisterModelRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND,
             f"Model not found: nope\n{NOT_FOUND}")):
        error = rpc_error(m.UnregisterModel, req)
        assert (error.code(), error.details()) == (code, details)
    gone = m.UnregisterModel(pb2.UnregisterModelRequest(model_name="echo", model_version="1.0"))
    assert gone.msg == 'Model "echo" unregistered'
    answer = stubs.inference.Predictions(request(ts, "echo", data=b"v2"))
    assert json.loads(answer.prediction)["version"] == "2.0"
    # the async register: accepted, the workers come in the background
    accepted = m.RegisterModel(pb2.RegisterModelRequest(url="echo.mar", model_name="echo1",
                                                        initial_workers=1))
    assert accepted.msg == "Processing worker updates..."
    assert m.UnregisterModel(pb2.UnregisterModelRequest(model_name="echo1")).msg == \
        'Model "echo1" unregistered'


# -- TorchServe personality: --ts-config, token authorization, the model API ---------------


@pytest.fixture(scope="module")
def ts_srv(grpc_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """TorchServe's defaults (--ts-config): token authorization on, model API off; the gRPC
    ports from the file's grpc_inference_port / grpc_management_port."""
    root = tmp_path_factory.mktemp("ts-grpc-personality")
    ports = (free_port(), free_port())
    props = root / "config.properties"
    props.write_text(f"grpc_inference_port={ports[0]}\ngrpc_management_port={ports[1]}\n"
                     "grpc_inference_address=127.0.0.1\n")
    server = Server(root, grpc_store, ["echo=echo.mar"], auth=True,
                    extra_args=["--ts-config", str(props)])
    server.ts_ports = ports  # type: ignore[attr-defined]
    server.start()
    yield server
    assert not server.stop()


@pytest.fixture(scope="module")
def ts_stubs(ts: SimpleNamespace, ts_srv: Server) -> Iterator[Stubs]:
    yield from _stubs(ts, ts_srv)


def test_personality_serves_the_grpc_apis_from_the_ts_config(ts_srv):
    log = ts_srv.log()
    port, management = ts_srv.ts_ports
    assert f"TorchServe gRPC Inference: 127.0.0.1:{port}  " in log
    assert f"TorchServe gRPC Management: 127.0.0.1:{management}  " in log


def test_every_method_needs_its_key(ts, ts_srv, ts_stubs):
    """GRPCInterceptor: every call of the service, Ping included, needs its own key
    (inference on 7070, management on 7071) as 'authorization: Bearer KEY', else
    PERMISSION_DENIED (test_gRPC_token_authorization.py)."""
    from google.protobuf import empty_pb2

    keys = json.loads((ts_srv.root / "key_file.json").read_text())
    inference, management = keys["inference"]["key"], keys["management"]["key"]
    i, m = ts_stubs.inference, ts_stubs.management
    pb2, mpb2 = ts.inference_pb2, ts.management_pb2
    calls = [
        (i.Ping, empty_pb2.Empty(), inference),
        (i.Predictions, request(ts, "echo", data=b"x"), inference),
        (i.StreamPredictions, request(ts, "echo", data=b"x"), inference),
        (i.StreamPredictions2, iter([pb2.PredictionsRequest(model_name="echo",
                                                            sequence_id="s")]), inference),
        (m.ListModels, mpb2.ListModelsRequest(), management),
        (m.DescribeModel, mpb2.DescribeModelRequest(model_name="echo"), management),
        (m.ScaleWorker, mpb2.ScaleWorkerRequest(model_name="echo"), management),
        (m.SetDefault, mpb2.SetDefaultRequest(model_name="echo", model_version="1.0"),
         management),
        (m.RegisterModel, mpb2.RegisterModelRequest(url="echo.mar"), management),
        (m.UnregisterModel, mpb2.UnregisterModelRequest(model_name="echo"), management),
    ]
    wrong = {inference: management, management: inference}
    for call, req, key in calls:
        for metadata in ((), (("authorization", "Bearer incorrect-token"),),
                         (("authorization", f"Bearer {wrong[key]}"),),
                         (("authorization", key),)):
            error = rpc_error(call, req, metadata=metadata)
            assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED,
                                                       DENIED), (call, metadata)
    # with the key: answered (TorchServe's pattern Bearer\s+TOKEN allows more blanks)
    ok = (("protocol", "gRPC"), ("authorization", f"Bearer  {inference}"))
    assert i.Ping(empty_pb2.Empty(), metadata=ok).health == '{\n  "status": "Healthy"\n}'
    answer = i.Predictions(request(ts, "echo", data=b"k"), metadata=ok)
    assert json.loads(answer.prediction)["fields"] == {"data": "k"}
    listed = m.ListModels(mpb2.ListModelsRequest(),
                          metadata=(("authorization", f"Bearer {management}"),))
    assert [x["modelName"] for x in json.loads(listed.msg)["models"]] == ["echo"]


def test_model_api_off_refuses_register_and_unregister(ts, ts_srv, ts_stubs):
    """ManagementImpl.registerModel / unregisterModel with the model API disabled (TorchServe's
    default): PERMISSION_DENIED "Model API disabled" (a ModelException)."""
    keys = json.loads((ts_srv.root / "key_file.json").read_text())
    metadata = (("authorization", f"Bearer {keys['management']['key']}"),)
    pb2, m = ts.management_pb2, ts_stubs.management
    for call, req in ((m.RegisterModel, pb2.RegisterModelRequest(url="echo-2.0.mar")),
                      (m.UnregisterModel, pb2.UnregisterModelRequest(model_name="echo"))):
        error = rpc_error(call, req, metadata=metadata)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "Model API disabled\norg.pytorch.serve.archive.model.ModelException")


def test_enable_grpc_ssl_serves_both_apis_over_tls(ts, grpc_store, tmp_path):
    """ModelServer (enable_grpc_ssl=true): TorchServe's gRPC servers use certificate_file and
    private_key_file; a client that trusts the CA calls them, a plain one cannot."""
    from google.protobuf import empty_pb2

    from tests.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    ports = (free_port(), free_port())
    props = tmp_path / "config.properties"
    props.write_text(f"grpc_inference_port={ports[0]}\ngrpc_management_port={ports[1]}\n"
                     f"enable_grpc_ssl=true\ncertificate_file={pki.cert}\n"
                     f"private_key_file={pki.key}\n")
    server = Server(tmp_path, grpc_store, ["echo=echo.mar"],
                    extra_args=["--ts-config", str(props)]).start()
    try:
        trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        with grpc.secure_channel(f"localhost:{ports[0]}", trusted) as channel:
            stub = ts.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
            assert json.loads(stub.Ping(empty_pb2.Empty(), timeout=30).health) == {
                "status": "Healthy"}
        with grpc.secure_channel(f"localhost:{ports[1]}", trusted) as channel:
            stub = ts.management_pb2_grpc.ManagementAPIsServiceStub(channel)
            listed = stub.ListModels(ts.management_pb2.ListModelsRequest(), timeout=30)
            assert [m["modelName"] for m in json.loads(listed.msg)["models"]] == ["echo"]
        with grpc.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
            stub = ts.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
            assert rpc_error(stub.Ping, empty_pb2.Empty(), timeout=5).code() == \
                grpc.StatusCode.UNAVAILABLE
        assert f"127.0.0.1:{ports[0]}  (org.pytorch.serve.grpc.inference." \
               "InferenceAPIsService, TLS)" in server.log()
    finally:
        assert not server.stop()
