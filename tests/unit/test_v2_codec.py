"""OIP v2 wire formats without a server: datatypes, BYTES, REST JSON/binary parsing, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelserve.datatypes import (
    TensorError,
    check_raw_size,
    datatype_of,
    from_json_data,
    from_numpy,
    serialize_bytes,
    to_numpy,
)
from modelserve.server.transport.v2.rest_codec import encode_response, parse_request
from modelserve.server.transport.v2.types import InferRequest, RequestedOutput, Signature, Tensor


@pytest.mark.parametrize("dtype", ["bool", "u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8",
                                   "f2", "f4", "f8"])
def test_numeric_round_trip(dtype):
    x = (np.arange(6) % 2 == 0) if dtype == "bool" else np.arange(6).astype(dtype)
    datatype, shape, raw = from_numpy(x.reshape(2, 3))
    assert datatype == datatype_of(x.dtype)
    np.testing.assert_array_equal(to_numpy(datatype, shape, raw), x.reshape(2, 3))
    assert from_json_data(datatype, shape, x.reshape(2, 3).tolist()) == raw


def test_bytes_wire_format():
    raw = serialize_bytes(np.array([b"ab", "é", b""], dtype=object))
    assert raw == b"\x02\x00\x00\x00ab\x02\x00\x00\x00\xc3\xa9\x00\x00\x00\x00"
    assert to_numpy("BYTES", [3], raw).tolist() == [b"ab", "é".encode(), b""]
    with pytest.raises(TensorError, match="fewer than the 4 elements"):
        check_raw_size("BYTES", [4], raw)
    with pytest.raises(TensorError, match="after its 2 elements"):
        check_raw_size("BYTES", [2], raw)
    with pytest.raises(TensorError, match="runs past the end"):
        check_raw_size("BYTES", [1], b"\x09\x00\x00\x00abc")


@pytest.mark.parametrize(("datatype", "shape", "data", "message"), [
    ("FP32", [2, 2], [1, 2, 3], r"3 FP32 values for shape \[2, 2\]"),
    ("INT8", [1], [300], r"INT8 data"),
    ("UINT8", [1], [-1], r"UINT8 data"),
    ("FP32", [2], ["a", "b"], r"not a \(nested\) list of numbers"),
    ("FP32", [-1], [], r"invalid shape"),
    ("BF16", [1], [1.0], r"unsupported datatype"),
    ("BYTES", [2], ["a", 1], r"must be strings"),
    ("INT32", [2], [1.7, 2], r"INT32 data must be integers"),  # not truncated to 1
    ("UINT8", [1], [float("nan")], r"UINT8 data"),
    ("INT64", [1], [2.0**70], r"INT64 data"),
    ("BOOL", [2], [0.5, True], r"BOOL data must be true/false"),
    ("BOOL", [1], [2], r"BOOL data must be true/false"),
])
def test_bad_json_data(datatype, shape, data, message):
    with pytest.raises(TensorError, match=message):
        from_json_data(datatype, shape, data)


def test_parse_binary_request_slices_the_body_without_copying():
    x = np.arange(4, dtype=np.float32)
    header = json.dumps({"id": 7, "inputs": [
        {"name": "a", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
        {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["hi"]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}]}).encode()
    req = parse_request(header + x.tobytes(), str(len(header)))
    assert req.id == "7"
    a, b = req.inputs
    assert isinstance(a.raw, memoryview) and bytes(a.raw) == x.tobytes()
    assert b.raw == b"\x02\x00\x00\x00hi"
    assert req.outputs == [RequestedOutput("y", False, {"binary_data": False})]


def test_output_encoding_binary_and_json():
    outputs = [["y", "FP32", [2], np.array([1.5, 2], "<f4").tobytes()],
               ["z", "BYTES", [1], b"\x01\x00\x00\x00q"]]
    req = InferRequest([], [RequestedOutput("y", True), RequestedOutput("z")], "r1")
    body, size = encode_response("m", "1", req, outputs)
    doc = json.loads(body[:size])
    assert doc["id"] == "r1" and doc["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert doc["outputs"][1]["data"] == ["q"]
    assert np.frombuffer(body[size:], "<f4").tolist() == [1.5, 2.0]
    body, size = encode_response("m", "1", InferRequest([]), outputs)
    assert size is None and json.loads(body)["outputs"][0]["data"] == [1.5, 2.0]
    bad = [["z", "BYTES", [1], b"\x01\x00\x00\x00\xff"]]
    with pytest.raises(TensorError, match="not UTF-8"):
        encode_response("m", "1", InferRequest([]), bad)


def test_non_finite_floats_cross_json_as_python_and_triton_write_them():
    """NaN / Infinity / -Infinity tokens are read (a missing feature is often sent as NaN)
    and written back as tokens, not as null (orjson's default)."""
    body = (b'{"inputs":[{"name":"x","datatype":"FP32","shape":[4],'
            b'"data":[NaN,Infinity,-Infinity,0.5]}]}')
    (x,) = parse_request(body, None).inputs
    got = np.frombuffer(x.raw, "<f4")
    assert np.isnan(got[0]) and got[1:].tolist() == [float("inf"), float("-inf"), 0.5]
    out = [["y", "FP32", [4], x.raw], ["n", "INT32", [1], np.int32(3).tobytes()]]
    text, size = encode_response("m", "1", InferRequest([]), out)
    assert size is None and b"[NaN,Infinity,-Infinity,0.5]" in text
    doc = json.loads(text)  # Python's json (tritonclient, requests) reads it back
    assert np.isnan(doc["outputs"][0]["data"][0]) and doc["outputs"][1]["data"] == [3]
    # finite outputs keep orjson's float32 formatting
    finite = [["y", "FP32", [1], np.float32(0.1).tobytes()]]
    assert b'"data":[0.1]' in encode_response("m", "1", InferRequest([]), finite)[0]


def test_signature_validation():
    sig = Signature.from_dict({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                               "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]})
    ok = Tensor("x", "FP32", [3, 2], b"\x00" * 24)
    sig.validate(InferRequest([ok]))
    for tensor, outputs, message in [
        (Tensor("x", "FP32", [3, 3], b"\x00" * 36), None, "does not match"),
        (Tensor("x", "FP32", [3, 2], b"\x00" * 20), None, "20 bytes of data"),
        (Tensor("x", "INT32", [3, 2], b"\x00" * 24), None, "expects FP32"),
        (ok, [RequestedOutput("q")], "unknown output 'q'"),
    ]:
        with pytest.raises(TensorError, match=message):
            sig.validate(InferRequest([tensor], outputs))
    with pytest.raises(TensorError, match="missing input"):
        Signature.from_dict({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]},
                                        {"name": "w", "datatype": "FP32", "shape": [1]}]}
                            ).validate(InferRequest([Tensor("x", "FP32", [1], b"\0" * 4)]))


def test_v2_statistics_record_success_and_failure():
    from modelserve.server.transport.v2.core import _Stats

    req = InferRequest([Tensor("x", "FP32", [4, 2], b"\0" * 32)])
    stats = _Stats()
    stats.record(True, req, 1000, 300)
    stats.record(False, req, 50, 0)
    assert (stats.success, stats.success_ns, stats.queue_ns, stats.infer_ns) == (1, 1000, 300, 700)
    assert (stats.fail, stats.fail_ns, stats.inferences) == (1, 50, 4) and stats.last_ms > 0
