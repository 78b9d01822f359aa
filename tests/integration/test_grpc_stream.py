"""OIP v2 gRPC ModelStreamInfer (Triton's bidirectional stream) with tritonclient, against a
real server and real workers: a streaming handler answers with one response per chunk, a
non-streaming one answers once, as ModelInfer does (README, "Streaming responses").

The streaming handler is written here: it reads a JSON spec from its BYTES input ``SPEC``
(``mode``: ``gen`` a generator per request, ``steps`` one generator for the batch,
``intermediate`` TorchServe's send_intermediate_predict_response; ``n``, ``delay``, ``tag``,
``fail_at``, ``count_file``, ``plain``), and so takes /predictions JSON bodies too.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import COUNTED_CHUNKS, IDENTITY_HANDLER, Server, handler_archive

CHUNKS_HANDLER = textwrap.dedent('''
    import json
    import os
    import time

    from ts.protocol.otf_message_handler import send_intermediate_predict_response


    def spec_of(row):
        body = row.get("body") if row.get("body") is not None else row.get("data")
        if isinstance(body, dict) and "inputs" in body:  # an OIP v2 request
            return {**json.loads(bytes(body["inputs"][0]["data"].ravel()[0])), "v2": True}
        return body if isinstance(body, dict) else json.loads(body)


    def chunk(spec, seq, batch):
        return {"seq": seq, "t": time.time(), "tag": spec.get("tag"), "batch": batch,
                "v2": spec.get("v2", False), "pid": os.getpid()}


    class ChunkStreamer:
        def initialize(self, context):
            self.context = context

        def gen(self, spec, batch):
            return counted_chunks(spec, lambda i: chunk(spec, i, batch))

        def steps(self, specs):
            for i in range(max(s.get("n", 3) for s in specs)):
                if i:
                    time.sleep(specs[0].get("delay", 0.0))
                yield [chunk(s, i, len(specs)) if i < s.get("n", 3) else None for s in specs]

        def handle(self, data, context):
            specs = [spec_of(row) for row in data]
            mode = specs[0].get("mode", "gen")
            if mode == "steps":
                return self.steps(specs)
            if mode == "intermediate":
                n = specs[0].get("n", 3)
                for i in range(n - 1):
                    if i:
                        time.sleep(specs[0].get("delay", 0.0))
                    send_intermediate_predict_response(
                        [chunk(s, i, len(specs)) for s in specs], context.request_ids,
                        "Intermediate Prediction success", 200, context)
                time.sleep(specs[0].get("delay", 0.0))
                return [chunk(s, n - 1, len(specs)) for s in specs]
            out = []
            for spec in specs:
                if spec.get("plain"):
                    out.append({"outputs": [{"name": "answer", "datatype": "BYTES",
                                             "shape": [1], "data": [json.dumps(spec)]}]})
                else:
                    out.append(self.gen(spec, len(data)))
            return out
''') + COUNTED_CHUNKS


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    src = tmp_path_factory.mktemp("grpc-stream-src")
    store = tmp_path_factory.mktemp("grpc-stream-store")
    # while the worker is busy, a batch waits up to 1 s to fill; an idle one starts at once
    handler_archive(src, store, "chunks", CHUNKS_HANDLER, {"batchSize": 3, "maxBatchDelay": 1000})
    handler_archive(src, store, "identity", IDENTITY_HANDLER, {"batchSize": 1})
    server = Server(tmp_path_factory.mktemp("grpc-stream-server"), store,
                    ["chunks.mar", "identity.mar"])
    server.start()
    yield server
    survivors = server.stop()
    assert not survivors, f"worker processes outlived the server: {survivors}"


def spec_input(spec: dict) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("SPEC", [1], "BYTES")
    inp.set_data_from_numpy(np.array([json.dumps(spec).encode()], dtype=object))
    return inp


def aio_spec_input(spec: dict) -> aiogrpcclient.InferInput:
    inp = aiogrpcclient.InferInput("SPEC", [1], "BYTES")
    inp.set_data_from_numpy(np.array([json.dumps(spec).encode()], dtype=object))
    return inp


def final_flag(result) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


def chunk_of(result, output: str = "OUTPUT") -> dict:
    (value,) = result.as_numpy(output)
    return json.loads(value)


class Collector:
    """tritonclient's stream callback: (arrival time, result, error) into a queue."""

    def __init__(self) -> None:
        self.items: queue.Queue = queue.Queue()

    def __call__(self, result, error) -> None:
        self.items.put((time.time(), result, error))

    def take(self, count: int, timeout: float = 30) -> list[tuple[float, object, object]]:
        return [self.items.get(timeout=timeout) for _ in range(count)]


@pytest.fixture
def stream(srv):
    """A tritonclient.grpc client with a started stream, and what its callback collected."""
    client = grpcclient.InferenceServerClient(srv.grpc)
    collected = Collector()
    client.start_stream(callback=collected)
    yield client, collected
    client.stop_stream(cancel_requests=True)
    client.close()


# -- a streaming handler -------------------------------------------------------------------
def test_chunks_arrive_one_by_one_with_the_request_id(stream):
    client, collected = stream
    start = time.time()
    client.async_stream_infer("chunks", [spec_input({"n": 4, "delay": 0.5, "tag": "a"})],
                              request_id="req-a", enable_empty_final_response=True)
    got = collected.take(5)
    assert all(error is None for _, _, error in got), got
    results = [result for _, result, _ in got]
    assert all(r.get_response().id == "req-a" for r in results)
    assert all(r.get_response().model_name == "chunks" for r in results)
    assert all(r.get_response().model_version == "1.0" for r in results)
    chunks = [chunk_of(r) for r in results[:4]]
    assert [c["seq"] for c in chunks] == [0, 1, 2, 3]
    assert all(c["tag"] == "a" and c["v2"] and c["t"] >= start for c in chunks)
    assert [final_flag(r) for r in results] == [False] * 4 + [True]
    (out,) = results[0].get_response().outputs
    assert (out.name, out.datatype, list(out.shape)) == ("OUTPUT", "BYTES", [1])
    assert out.parameters["content_type"].string_param == "application/json"
    # the empty final response: no outputs, only the flag and the request it ends
    assert results[4].get_response().outputs == [] and results[4].as_numpy("OUTPUT") is None
    # the first chunk was received 1.5 s before the handler even produced the last one
    first_arrival = got[0][0]
    assert first_arrival < chunks[-1]["t"] - 1.0, (first_arrival, chunks[-1]["t"])
    # chunks arrived as they were produced, not at the end
    arrivals = [t for t, _, _ in got[:4]]
    assert all(b - a > 0.3 for a, b in zip(arrivals, arrivals[1:])), arrivals


def test_without_empty_final_response_only_the_chunks_come(stream):
    client, collected = stream
    client.async_stream_infer("chunks", [spec_input({"n": 2, "tag": "x"})], request_id="x",
                              outputs=[grpcclient.InferRequestedOutput("text")])
    client.async_stream_infer("chunks", [spec_input({"n": 1, "tag": "y", "plain": True})],
                              request_id="y")
    got = collected.take(3)
    by_id: dict[str, list] = {}
    for _, result, error in got:
        assert error is None
        by_id.setdefault(result.get_response().id, []).append(result)
    # the output is named as the request asked
    assert [chunk_of(r, "text")["seq"] for r in by_id["x"]] == [0, 1]
    assert [final_flag(r) for r in by_id["x"]] == [False, False]
    # a request the handler answers whole (not a generator) gets one tensor answer
    (plain,) = by_id["y"]
    assert final_flag(plain)
    assert json.loads(plain.as_numpy("answer")[0])["tag"] == "y"
    with pytest.raises(queue.Empty):
        collected.items.get(timeout=0.5)


@pytest.mark.parametrize("mode", ["steps", "intermediate"])
def test_other_streaming_forms(stream, mode):
    """One generator for the batch, and TorchServe's send_intermediate_predict_response."""
    client, collected = stream
    client.async_stream_infer("chunks", [spec_input({"mode": mode, "n": 3, "delay": 0.4,
                                                     "tag": mode})],
                              request_id=mode, enable_empty_final_response=True)
    got = collected.take(4)
    assert all(error is None for _, _, error in got), got
    chunks = [chunk_of(r) for _, r, _ in got[:3]]
    assert [c["seq"] for c in chunks] == [0, 1, 2] and {c["tag"] for c in chunks} == {mode}
    assert [final_flag(r) for _, r, _ in got] == [False, False, False, True]
    assert got[0][0] < chunks[-1]["t"] - 0.5


def test_concurrent_requests_on_one_stream_share_a_batch(stream):
    """Requests on a stream run concurrently (here batched together, with a busy worker
    first), and their chunks interleave, each response naming its request."""
    client, collected = stream
    client.async_stream_infer("chunks", [spec_input({"n": 2, "delay": 0.8, "tag": "busy"})],
                              request_id="busy")
    time.sleep(0.2)
    for tag in ("p", "q"):
        client.async_stream_infer("chunks", [spec_input({"n": 3, "delay": 0.3, "tag": tag})],
                                  request_id=tag, enable_empty_final_response=True)
    got = collected.take(2 + 2 * 4)
    assert all(error is None for _, _, error in got), got
    by_id: dict[str, list] = {}
    for _, result, _ in got:
        by_id.setdefault(result.get_response().id, []).append(result)
    for tag in ("p", "q"):
        chunks = [chunk_of(r) for r in by_id[tag][:3]]
        assert [c["seq"] for c in chunks] == [0, 1, 2] and {c["tag"] for c in chunks} == {tag}
        assert {c["batch"] for c in chunks} == {2}
        assert final_flag(by_id[tag][3])
    order = [r.get_response().id for _, r, _ in got]
    assert order.index("q") < len(order) - 1 - order[::-1].index("p"), order  # interleaved


def batch_metric(server: Server) -> tuple[float, float]:
    """(batches, requests) the chunks model's worker has run."""
    text = httpx.get(f"{server.metrics}/metrics").text

    def value(name: str) -> float:
        pattern = rf'^{name}\{{[^}}]*model_name="chunks"[^}}]*\}} (\S+)$'
        return sum(float(m) for m in re.findall(pattern, text, re.M))

    return value("modelserve_batch_size_count"), value("modelserve_batch_size_sum")


def test_mixed_batch_of_predictions_and_stream_requests(srv, stream):
    """A /predictions stream and a ModelStreamInfer stream in one batch: each gets its own
    chunks (the worker streams each part of a mixed batch at the part's own positions)."""
    client, collected = stream
    batches, requests = batch_metric(srv)
    client.async_stream_infer("chunks", [spec_input({"n": 2, "tag": "busy", "delay": 1.0,
                                                     "mode": "steps"})], request_id="busy")
    time.sleep(0.3)  # the worker is busy: the next two requests wait, and batch together
    lines: list[dict] = []

    def predictions() -> None:
        with httpx.stream("POST", f"{srv.inference}/predictions/chunks", timeout=30,
                          json={"n": 3, "delay": 0.2, "tag": "http"}) as r:
            lines.extend(json.loads(line) for line in r.iter_lines() if line)

    thread = threading.Thread(target=predictions)
    thread.start()
    client.async_stream_infer("chunks", [spec_input({"n": 2, "delay": 0.2, "tag": "grpc"})],
                              request_id="grpc", enable_empty_final_response=True)
    thread.join(30)
    got = collected.take(2 + 3)
    assert all(error is None for _, _, error in got), got
    grpc_results = [r for _, r, _ in got if r.get_response().id == "grpc"]
    assert [(chunk_of(r)["tag"], chunk_of(r)["seq"]) for r in grpc_results[:2]] == [
        ("grpc", 0), ("grpc", 1)]
    assert final_flag(grpc_results[2])
    assert [(c["tag"], c["seq"], c["v2"]) for c in lines] == [("http", i, False)
                                                              for i in range(3)]
    time.sleep(0.3)
    after = batch_metric(srv)
    assert (after[0] - batches, after[1] - requests) == (2, 3), \
        "the two requests were not batched together: nothing was mixed"


# -- a non-streaming model -------------------------------------------------------------------
def test_non_streaming_model_answers_once_as_model_infer(srv, stream):
    client, collected = stream
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    inp = grpcclient.InferInput("x", [2, 3], "INT32")
    inp.set_data_from_numpy(x)
    outputs = [grpcclient.InferRequestedOutput(n) for n in ("x", "params")]
    client.async_stream_infer("identity", [inp], request_id="once", outputs=outputs,
                              parameters={"tag": "s"}, enable_empty_final_response=True)
    ((_, streamed, error),) = collected.take(1)
    assert error is None
    with pytest.raises(queue.Empty):  # once: no chunks, no separate final response
        collected.items.get(timeout=1.0)
    assert final_flag(streamed)
    with grpcclient.InferenceServerClient(srv.grpc) as plain:
        direct = plain.infer("identity", [inp], request_id="once", outputs=outputs,
                             parameters={"tag": "s"}).get_response()
    got = streamed.get_response()
    assert (got.id, got.model_name, got.model_version) == ("once", "identity", "1.0")
    assert list(got.outputs) == list(direct.outputs)
    assert list(got.raw_output_contents) == list(direct.raw_output_contents)
    np.testing.assert_array_equal(streamed.as_numpy("x"), x)
    # triton_enable_empty_final_response is the transport's, not passed to the handler
    assert json.loads(streamed.as_numpy("params")[0]) == {"tag": "s"}


def test_model_infer_of_a_streaming_model_points_at_the_stream(srv):
    with grpcclient.InferenceServerClient(srv.grpc) as client:
        with pytest.raises(InferenceServerException, match="ModelStreamInfer") as info:
            client.infer("chunks", [spec_input({"n": 2})])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


# -- errors ----------------------------------------------------------------------------------
def test_errors_are_responses_and_the_stream_goes_on(stream):
    client, collected = stream
    client.async_stream_infer("chunks", [spec_input({"n": 4, "fail_at": 2, "tag": "f"})],
                              request_id="fails", enable_empty_final_response=True)
    got = collected.take(3)
    assert [chunk_of(r)["seq"] for _, r, e in got[:2]] == [0, 1]
    _, result, error = got[2]
    assert result is None and "failed at chunk 2" in str(error)
    # before the first chunk: an unknown model, a handler error, an invalid request
    client.async_stream_infer("nope", [spec_input({})], request_id="e1")
    client.async_stream_infer("chunks", [spec_input({"n": 3, "fail_at": 0})], request_id="e2")
    bad = spec_input({})
    bad.set_shape([2])  # one element's data for a shape of two
    client.async_stream_infer("chunks", [bad], request_id="e3")
    errors = sorted(str(e) for _, _, e in collected.take(3))
    assert any("Model not found: nope" in e for e in errors), errors
    assert any("failed at chunk 0" in e for e in errors), errors
    assert any("SPEC" in e for e in errors), errors
    # the same stream still serves
    client.async_stream_infer("chunks", [spec_input({"n": 2, "tag": "after"})],
                              request_id="after")
    assert [chunk_of(r)["tag"] for _, r, _ in collected.take(2)] == ["after", "after"]


def test_error_responses_name_their_request(srv):
    """(tritonclient hands over only the message; a raw client sees which request failed.)"""
    request = service_pb2.ModelInferRequest(model_name="nope", id="which", inputs=[
        service_pb2.ModelInferRequest.InferInputTensor(name="SPEC", datatype="BYTES",
                                                       shape=[1])],
        raw_input_contents=[b"\x02\x00\x00\x00{}"])
    with grpc.insecure_channel(srv.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        (response,) = list(stub.ModelStreamInfer(iter([request])))
        assert "Model not found" in response.error_message
        assert response.infer_response.id == "which"
        assert response.infer_response.model_name == "nope"
        assert list(stub.ModelStreamInfer(iter([]))) == []  # an empty stream ends cleanly


# -- cancelling ------------------------------------------------------------------------------
def read_count(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_cancelling_the_stream_stops_the_handler(srv, tmp_path):
    count_file = tmp_path / "count"
    client = grpcclient.InferenceServerClient(srv.grpc)
    collected = Collector()
    client.start_stream(callback=collected)
    try:
        client.async_stream_infer("chunks", [spec_input({
            "n": 50, "delay": 0.2, "tag": "c", "count_file": str(count_file)})])
        got = collected.take(2)
        assert [chunk_of(r)["seq"] for _, r, _ in got] == [0, 1]
        client.stop_stream(cancel_requests=True)
    finally:
        client.close()
    deadline = time.monotonic() + 10
    while "closed" not in read_count(count_file) and time.monotonic() < deadline:
        time.sleep(0.1)
    text = read_count(count_file)
    assert text.endswith("closed"), text
    produced = int(text.split()[0])
    assert 2 <= produced < 10, text  # stopped within a few chunks, not after 50
    time.sleep(1.0)
    assert read_count(count_file) == text  # and stays stopped
    # the worker is free again
    with grpcclient.InferenceServerClient(srv.grpc) as again:
        again.start_stream(callback=(after := Collector()))
        again.async_stream_infer("chunks", [spec_input({"n": 1, "tag": "next"})])
        ((_, result, error),) = after.take(1)
        assert error is None and chunk_of(result)["tag"] == "next"
        again.stop_stream()


async def test_aio_stream_infer_and_cancel(srv, tmp_path):
    count_file = tmp_path / "count"
    client = aiogrpcclient.InferenceServerClient(srv.grpc)
    try:
        async def requests():
            yield {"model_name": "chunks", "request_id": "aio-1",
                   "inputs": [aio_spec_input({"n": 3, "delay": 0.2, "tag": "aio"})],
                   "parameters": {"triton_enable_empty_final_response": True}}
            yield {"model_name": "identity", "request_id": "aio-2",
                   "inputs": [aio_spec_input({"tag": "whole"})]}

        seen: dict[str, list] = {}
        async for result, error in client.stream_infer(requests()):
            assert error is None, error
            response = result.get_response()
            seen.setdefault(response.id, []).append(result)
            if len(seen.get("aio-1", [])) == 4 and "aio-2" in seen:
                break
        assert [chunk_of(r)["seq"] for r in seen["aio-1"][:3]] == [0, 1, 2]
        assert final_flag(seen["aio-1"][3]) and final_flag(seen["aio-2"][0])
        assert json.loads(seen["aio-2"][0].as_numpy("SPEC")[0]) == {"tag": "whole"}

        async def endless():
            yield {"model_name": "chunks", "request_id": "long", "inputs": [aio_spec_input(
                {"n": 50, "delay": 0.2, "count_file": str(count_file)})]}
            await asyncio.sleep(60)  # keeps the request side open

        responses = client.stream_infer(endless())
        first = [await responses.__anext__() for _ in range(2)]
        assert [chunk_of(r)["seq"] for r, _ in first] == [0, 1]
        responses.cancel()
    finally:
        await client.close()
    deadline = time.monotonic() + 10
    while "closed" not in read_count(count_file) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    text = read_count(count_file)
    assert text.endswith("closed") and int(text.split()[0]) < 10, text
