"""TorchServe's gRPC APIs, the parts that need no server: status codes (GRPCUtils), the
input map as the worker reads it, ErrorInfo's encoding, RegisterModelRequest's reading.
The calls themselves: tests/integration/test_ts_grpc.py. Nothing here imports the committed
``*_pb2`` modules (that test's client modules, made from the same protos, share the process).
"""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

import grpc
import pytest

from modelserve.errors import BadRequestError
from modelserve.server.transport.torchserve.grpc_common import (
    details,
    error_info,
    form_body,
    grpc_code,
    gson_pretty,
    register_request,
)
from modelserve.worker.codec import decode_request

S = grpc.StatusCode


@pytest.mark.parametrize("status, code", [
    # GRPCUtils.getGRPCStatusCode, case by case, then its ranges
    (200, S.OK), (202, S.OK), (400, S.INVALID_ARGUMENT), (401, S.UNAUTHENTICATED),
    (403, S.PERMISSION_DENIED), (404, S.NOT_FOUND), (409, S.ABORTED),
    (413, S.RESOURCE_EXHAUSTED), (429, S.RESOURCE_EXHAUSTED), (416, S.OUT_OF_RANGE),
    (499, S.CANCELLED), (504, S.DEADLINE_EXCEEDED), (501, S.UNIMPLEMENTED),
    (503, S.UNAVAILABLE), (405, S.FAILED_PRECONDITION), (418, S.FAILED_PRECONDITION),
    (500, S.INTERNAL), (507, S.INTERNAL), (302, S.UNKNOWN), (600, S.UNKNOWN),
])
def test_status_codes_are_grpcutils(status, code):
    assert grpc_code(status) == code


def test_details_and_json_are_grpc_java_and_gson():
    assert details("Model not found: x", "Cls") == "Model not found: x\nCls"
    assert gson_pretty({"status": "Healthy"}) == '{\n  "status": "Healthy"\n}'
    assert gson_pretty([{"a": "é<"}, []]) == '[\n  {\n    "a": "é<"\n  },\n  []\n]'


def test_the_input_map_reaches_the_handler_as_raw_bytes():
    """InferenceImpl: one InputParameter per map entry, its bytes as sent."""
    rng = random.Random(7)
    for _ in range(50):
        inputs = {f"k{i}": os.urandom(rng.randint(0, 2000)) for i in range(rng.randint(1, 4))}
        inputs['q"u\\o;te d'] = b"\r\n--\r\n\r\n"
        inputs["日本"] = b""
        body, content_type = form_body(inputs)
        assert decode_request(content_type, body) == inputs
    with pytest.raises(BadRequestError):
        form_body({"a\nb": b""})


def test_error_info_packs_the_reason_as_field_one():
    short = error_info("BadRequestException.()")
    assert short.type_url == "type.googleapis.com/google.rpc.ErrorInfo"
    assert short.value == b"\x0a\x16BadRequestException.()"
    long = error_info("x" * 300)  # a two-byte varint length
    assert long.value[:3] == b"\x0a\xac\x02" and long.value[3:] == b"x" * 300


def _grpc_register(**fields):
    defaults = {"url": "", "model_name": "", "handler": "", "runtime": "", "batch_size": 0,
                "max_batch_delay": 0, "initial_workers": 0, "response_timeout": 0,
                "startup_timeout": 0, "synchronous": False}
    return SimpleNamespace(**{**defaults, **fields})


def test_register_fields_read_as_grpcutils_reads_them():
    """GRPCUtils.getRegisterParam: "" and numbers <= 0 are "not given"; synchronous is the
    proto's boolean (false unless set), not the REST default (true)."""
    req = register_request(_grpc_register(url="a.mar", batch_size=-1, max_batch_delay=0,
                                          initial_workers=0, response_timeout=-5))
    assert (req.url, req.model_name, req.handler, req.runtime) == ("a.mar", None, None, None)
    assert (req.batch_size, req.max_batch_delay, req.initial_workers, req.response_timeout,
            req.startup_timeout, req.synchronous) == (None, None, None, None, None, False)
    given = register_request(_grpc_register(url="a.mar", model_name="m", batch_size=4,
                                            max_batch_delay=50, initial_workers=2,
                                            startup_timeout=9, synchronous=True))
    assert (given.model_name, given.batch_size, given.max_batch_delay, given.initial_workers,
            given.startup_timeout, given.synchronous) == ("m", 4, 50, 2, 9, True)
    with pytest.raises(BadRequestError, match="Parameter url is required."):
        register_request(_grpc_register())
    with pytest.raises(BadRequestError, match="invalid registration: model_name"):
        register_request(_grpc_register(url="a.mar", model_name="no spaces allowed"))
