"""TorchServe's request envelopes (modelserve.worker.envelopes): rows in, answers out, batch by
batch, compared with what TorchServe 0.12's ts/torch_handler/request_envelope/ does; and the
``service_envelope`` setting from config.properties down to the worker's arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from modelserve.config import load_settings
from modelserve.handlers.errors import BadInputError, PredictionException
from modelserve.server.engine.worker_spec import WorkerSpec
from modelserve.ts_config import read_ts_config
from modelserve.worker import envelopes
from modelserve.worker.batch import BatchRunner
from modelserve.worker.context import Context
from modelserve.worker.streaming import Streamer

MANIFEST = {"model": {"modelName": "mnist", "modelVersion": "1.0", "handler": "h.py"}}


def context(n: int, headers: list[dict[str, str]] | None = None) -> Context:
    ctx = Context("mnist", "/tmp", MANIFEST, 8, None)
    ctx.begin_batch([f"req-{i}" for i in range(n)], headers or [{} for _ in range(n)])
    return ctx


class Recorder:
    """A handler that answers each row with ("out", row) and keeps the batches it got."""

    def __init__(self) -> None:
        self.batches: list[Any] = []

    def __call__(self, data: Any, ctx: Context) -> Any:
        self.batches.append(data)
        return [("out", row) for row in data]


# -- kserve ---------------------------------------------------------------------------------

def test_kserve_one_request_is_torchserves_answer():
    handler = Recorder()
    env = envelopes.wrap(handler, "kserve")
    out = env([{"body": {"instances": [{"data": [1]}, {"data": [2]}]}}], context(1))
    assert handler.batches == [[{"data": [1]}, {"data": [2]}]]
    assert out == [{"predictions": [("out", {"data": [1]}), ("out", {"data": [2]})]}]


def test_kserve_alone_a_request_gets_every_result_whatever_their_count():
    env = envelopes.wrap(lambda data, ctx: ["one answer for all"], "kserve")
    assert env([{"body": {"instances": [1, 2, 3]}}], context(1)) == [
        {"predictions": ["one answer for all"]}]


def test_kserve_batch_splits_results_by_request_and_explains_per_header():
    handler = Recorder()
    env = envelopes.wrap(handler, "kserve")
    rows = [{"body": {"instances": [1, 2]}}, {"data": b'{"instances": [3]}'},
            {"body": {"instances": [4, 5, 6]}}]
    out = env(rows, context(3, [{}, {"explain": "True"}, {"explain": "False"}]))
    assert handler.batches == [[1, 2, 3, 4, 5, 6]]
    assert out == [{"predictions": [("out", 1), ("out", 2)]},
                   {"explanations": [("out", 3)]},
                   {"predictions": [("out", 4), ("out", 5), ("out", 6)]}]


@pytest.mark.parametrize("body", [{"inputs": [1]}, {"instances": []}, {"instances": 3}, [1],
                                  b"{not json", None])
def test_kserve_malformed_body_is_that_requests_400(body):
    handler = Recorder()
    env = envelopes.wrap(handler, "kserve")
    out = env([{"body": {"instances": [7]}}, {"body": body}], context(2))
    assert out[0] == {"predictions": [("out", 7)]}
    assert isinstance(out[1], BadInputError) and out[1].error_code == 400
    assert handler.batches == [[7]]  # the handler never sees the malformed request


def test_batched_result_count_mismatch_raises_so_the_batch_runs_alone():
    env = envelopes.wrap(lambda data, ctx: ["x"], "kserve")
    with pytest.raises(ValueError, match="1 results for the 3 rows of 2"):
        env([{"body": {"instances": [1, 2]}}, {"body": {"instances": [3]}}], context(2))


def test_a_failed_row_fails_its_request_only():
    boom = PredictionException("bad row", 422)
    env = envelopes.wrap(lambda data, ctx: [boom if r == 2 else r for r in data], "kserve")
    out = env([{"body": {"instances": [1, 2]}}, {"body": {"instances": [3]}}], context(2))
    assert out == [boom, {"predictions": [3]}]


def test_no_data_and_streams_pass_through():
    def gen() -> Any:
        yield 1
    stream = gen()
    assert envelopes.wrap(lambda data, ctx: data, "kserve")([], context(0)) == []
    env = envelopes.wrap(lambda data, ctx: stream, "kserve")
    assert env([{"body": {"instances": [1]}}], context(1)) is stream


# -- kservev2 -------------------------------------------------------------------------------

V2_BODY = {"id": "f0222600", "inputs": [
    {"name": "input-0", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
    {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}


def test_kservev2_rows_and_answer_as_torchserve_builds_them():
    handler = Recorder()
    env = envelopes.wrap(handler, "kservev2")
    out = env([{"body": V2_BODY}], context(1))
    assert handler.batches == [[
        {"name": "input-0", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": "hello"}]]
    env = envelopes.wrap(lambda data, ctx: [np.array([[0.5, 1.5]]), "label"], "kservev2")
    assert env([{"body": V2_BODY}], context(1)) == [{
        "id": "f0222600", "model_name": "mnist", "model_version": "1.0", "outputs": [
            {"name": "input-0", "datatype": "FP64", "data": [0.5, 1.5], "shape": [2]},
            {"name": "text", "datatype": "BYTES", "data": ["label"], "shape": [1]}]}]
    assert out[0]["outputs"][0]["datatype"] == "BYTES"  # a tuple of str and dict: objects


@pytest.mark.parametrize("value, datatype", [
    ([True], "BOOL"), (np.array([1], np.uint8), "UINT8"), (np.array([1], np.int8), "INT8"),
    (np.array([1], np.int32), "INT32"), ([3], "INT64"), (np.array([1], np.float16), "FP16"),
    (np.array([1], np.float32), "FP32"), ([{"a": 1}], "BYTES"), (["s"], "BYTES")])
def test_kservev2_output_datatypes_follow_numpy(value, datatype):
    env = envelopes.wrap(lambda data, ctx: [value], "kservev2")
    [answer] = env([{"body": {"inputs": V2_BODY["inputs"][:1]}}], context(1))
    assert answer["outputs"][0]["datatype"] == datatype
    assert answer["id"] == "req-0"  # no id in the body: the request's own, as TorchServe


def test_kservev2_bytes_output_is_an_error_of_that_request():
    env = envelopes.wrap(lambda data, ctx: [np.array([b"raw"])], "kservev2")
    [answer] = env([{"body": {"inputs": V2_BODY["inputs"][:1]}}], context(1))
    assert isinstance(answer, ValueError) and "datatype" in str(answer)


def test_kservev2_more_results_than_inputs_is_an_error():
    env = envelopes.wrap(lambda data, ctx: [1, 2, 3], "kservev2")
    [answer] = env([{"body": V2_BODY}], context(1))
    assert isinstance(answer, ValueError) and "3 results for a request of 2 inputs" in str(answer)


def test_kservev2_batch_and_context_input_names():
    seen: list[Any] = []

    def handler(data: Any, ctx: Context) -> Any:
        seen.append((list(ctx.input_names), ctx.input_request_id))
        return [row["data"] for row in data]

    ctx = context(2)
    env = envelopes.wrap(handler, "kservev2")
    second = {"id": "two", "inputs": [{"name": "b", "shape": [1], "datatype": "INT64",
                                       "data": [9]}]}
    out = env([{"body": V2_BODY}, {"data": orjson.dumps(second)}], ctx)
    assert seen == [(["input-0", "text", "b"], "f0222600")]
    assert not hasattr(ctx, "input_names") and not hasattr(ctx, "input_request_id")
    assert [a["id"] for a in out] == ["f0222600", "two"]
    assert [[o["name"] for o in a["outputs"]] for a in out] == [["input-0", "text"], ["b"]]
    assert out[1]["outputs"][0]["data"] == [9]


def test_kservev2_rows_of_the_native_v2_path():
    """/v2/models/{m}/infer gives a TorchServe-style handler ndarrays (BYTES: bytes); the
    envelope gives it what the JSON body would have: nested lists and strings."""
    handler = Recorder()
    env = envelopes.wrap(handler, "kservev2")
    body = {"id": None, "parameters": {}, "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2], "data": np.array([1, 2], np.float32)},
        {"name": "s", "datatype": "BYTES", "shape": [1], "data": np.array([b"hi"], object)},
        {"name": "raw", "datatype": "BYTES", "shape": [1],
         "data": np.array([b"\xff\x00"], object)}]}
    env([{"body": body}], context(1))
    assert [row["data"] for row in handler.batches[0]] == [[1.0, 2.0], "hi", b"\xff\x00"]


@pytest.mark.parametrize("body, message", [
    ({"inputs": []}, "at least one input"),
    ({"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [1, 2]}]},
     "does not fit shape"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": []}]}, "non-empty"),
    ({"inputs": [{"name": "a", "datatype": "FP32", "data": [1]}]}, "must have name, shape"),
    ({"inputs": [{"name": 1, "shape": [1], "datatype": "FP32", "data": [1]}]}, "strings"),
    ({"id": 5, "inputs": V2_BODY["inputs"]}, "'id' must be a string"),
])
def test_kservev2_malformed_bodies(body, message):
    [answer] = envelopes.wrap(Recorder(), "kservev2")([{"body": body}], context(1))
    assert isinstance(answer, BadInputError) and message in answer.message


# -- json and body --------------------------------------------------------------------------

def test_json_envelope_decodes_b64_and_splits_like_torchserve():
    handler = Recorder()
    env = envelopes.wrap(handler, "json")
    rows = [{"body": {"instances": [{"b64": "aGk="}, {"img": {"b64": "aGk="}, "k": 1}]}},
            {"instances": [3]}]  # no data/body field: the row itself, as TorchServe reads it
    out = env(rows, context(2))
    assert handler.batches == [[b"hi", {"img": b"hi", "k": 1}, 3]]
    assert out == [{"predictions": [("out", b"hi"), ("out", {"img": b"hi", "k": 1})]},
                   {"predictions": [("out", 3)]}]
    # alone, a request gets as many results as it had instances (TorchServe slices)
    env = envelopes.wrap(lambda data, ctx: [1, 2, 3], "json")
    assert env([{"body": {"instances": [7]}}], context(1)) == [{"predictions": [1]}]
    [bad] = env([{"body": {"instances": [{"b64": "!!"}]}}], context(1))
    assert isinstance(bad, BadInputError)


def test_body_envelope_hands_the_field_over():
    handler = Recorder()
    out = envelopes.wrap(handler, "body")([{"data": 1}, {"body": "x"}], context(2))
    assert handler.batches == [[1, "x"]] and out == [("out", 1), ("out", "x")]


def test_wrap_none_and_unknown():
    handler = Recorder()
    assert envelopes.wrap(handler, None) is handler
    with pytest.raises(ValueError, match="unknown service_envelope"):
        envelopes.wrap(handler, "seldon")


# -- through the worker's batch runner ------------------------------------------------------

class KServeHandler:
    """A handler class, as the worker starts it: its bound ``handle`` is the entry."""

    def handle(self, data: Any, ctx: Context) -> Any:
        if any(row == "fail" for row in data):
            raise PredictionException("asked to fail", 422)
        return [row * 2 for row in data]

    def handle_v2(self, requests: Any, ctx: Context) -> Any:  # the native OIP path's own
        return [{"y": np.array([1])} for _ in requests]


def _req(i: int, body: Any) -> list[Any]:
    return [f"req-{i}", "application/json", orjson.dumps(body), {}]


def test_batch_runner_wraps_the_handler_and_keeps_handle_v2_native():
    runner = BatchRunner(KServeHandler().handle, context(0), Streamer(None), "kserve")
    assert runner.v2.native is not None  # handle_v2 still found behind the envelope
    out = runner.run_batch([_req(0, {"instances": [1, 2]}), _req(1, {"instances": ["a"]}),
                            _req(2, {"oops": 1})])
    assert [o[0] for o in out] == [200, 200, 400]
    assert orjson.loads(out[0][2]) == {"predictions": [2, 4]}
    assert orjson.loads(out[1][2]) == {"predictions": ["aa"]}


def test_batch_runner_a_failing_request_is_retried_alone():
    runner = BatchRunner(KServeHandler().handle, context(0), Streamer(None), "kserve")
    out = runner.run_batch([_req(0, {"instances": [1]}), _req(1, {"instances": ["fail"]})])
    assert [o[0] for o in out] == [200, 422]
    assert orjson.loads(out[0][2]) == {"predictions": [2]}


# -- the setting ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [("kserve", "kserve"), (" kservev2 ", "kservev2"),
                                             ("json", "json"), ("body", "body"), ("", None)])
def test_config_properties_service_envelope(tmp_path: Path, value, expected):
    path = tmp_path / "config.properties"
    path.write_text(f"service_envelope={value}\n")
    config = read_ts_config(path)
    assert config.settings["service_envelope"] == expected
    assert not [w for w in config.warnings if w.startswith("service_envelope")]
    assert load_settings(ts_values=config.settings).service_envelope == expected


def test_config_properties_unknown_envelope_stops_the_start(tmp_path: Path):
    path = tmp_path / "config.properties"
    path.write_text("service_envelope=KServe\n")
    with pytest.raises(ValueError, match="service_envelope: 'KServe' is not one of"):
        read_ts_config(path)


def test_ts_environment_variable_sets_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TS_SERVICE_ENVELOPE", "kservev2")
    path = tmp_path / "config.properties"
    path.write_text("enable_envvars_config=true\nservice_envelope=kserve\n")
    assert read_ts_config(path).settings["service_envelope"] == "kservev2"


def test_setting_reaches_the_worker_arguments(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MODELSERVE_SERVICE_ENVELOPE", "kserve")
    assert load_settings().service_envelope == "kserve"
    spec = WorkerSpec("m", "1.0", "/tmp", "h.py", (), MANIFEST, {}, 1, "cpu", 1.0, 1.0, 1,
                      envelope="kserve")
    args = spec.args(0, 1)
    assert args[args.index("--envelope") + 1] == "kserve"
    assert "--envelope" not in WorkerSpec("m", "1.0", "/tmp", "h.py", (), MANIFEST, {}, 1,
                                          "cpu", 1.0, 1.0, 1).args(0, 1)
