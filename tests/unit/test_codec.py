"""Worker-side request decoding and response encoding (TorchServe's rules)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from modelserve.handlers.errors import BadInputError, PredictionException
from modelserve.worker.codec import decode_request, encode_response, error_response
from modelserve.worker.context import Context


def ctx() -> Context:
    c = Context("m", "/tmp", {}, 1, None)
    c.begin_batch(["r0"], [{}])
    return c


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/json", b'{"a": [1, 2]}', {"body": {"a": [1, 2]}}),
        ("application/json; charset=utf-8", b"[1]", {"body": [1]}),
        ("text/plain", "héllo".encode(), {"body": "héllo"}),
        ("image/png", b"\x89PNG", {"body": b"\x89PNG"}),
        ("", b"raw", {"body": b"raw"}),
        ("application/x-www-form-urlencoded", b"[1, 2]", {"body": [1, 2]}),
        ("application/x-www-form-urlencoded", b"a=1&b=two", {"a": "1", "b": "two"}),
        # curl -d "text" and --data-binary @image send this type: not a form, the payload
        ("application/x-www-form-urlencoded", b"some text", {"body": "some text"}),
        ("application/x-www-form-urlencoded", b"\xff\xd8\xff\xe0JFIF=1",
         {"body": b"\xff\xd8\xff\xe0JFIF=1"}),
        ("application/x-www-form-urlencoded", b"x=%20y+z&", {"x": " y z"}),
        # real forms stay forms, whatever characters their values hold (Netty's decoder)
        ("application/x-www-form-urlencoded", b"data=http://x/a.jpg", {"data": "http://x/a.jpg"}),
        ("application/x-www-form-urlencoded", b"text=hello world", {"text": "hello world"}),
        ("application/x-www-form-urlencoded", b"a=1&flag", {"a": "1", "flag": ""}),
        ("application/x-www-form-urlencoded", "k=hé".encode(), {"k": "hé"}),
    ],
)
def test_decode_request(content_type, body, expected):
    assert decode_request(content_type, body) == expected


def test_decode_multipart_gives_one_key_per_field():
    boundary = "XyZ"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"a.bin\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + b"\x00\x01" + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"meta\"\r\n"
        f"Content-Type: application/json\r\n\r\n{{\"k\": 1}}\r\n--{boundary}--\r\n"
    ).encode()
    fields = decode_request(f"multipart/form-data; boundary={boundary}", body)
    assert fields == {"data": b"\x00\x01", "meta": {"k": 1}}


def test_a_file_part_without_a_type_is_bytes_and_a_field_is_text():
    """python-requests' ``files={"data": open(...)}`` sends a filename and no Content-Type:
    bytes, as TorchServe's FileUpload (email would say text/plain); a plain field is text."""
    boundary = "b0"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"0.png\"\r\n"
        "\r\n"
    ).encode() + b"\x89PNG\xff" + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi"
        f"\r\n--{boundary}--\r\n"
    ).encode()
    fields = decode_request(f"multipart/form-data; boundary={boundary}", body)
    assert fields == {"data": b"\x89PNG\xff", "note": "hi"}


def test_invalid_json_is_bad_input():
    with pytest.raises(BadInputError, match="not valid JSON"):
        decode_request("application/json", b"{oops")


def test_encode_json_numpy_and_tensor_like():
    status, ct, body, _ = encode_response({"x": np.float32(1.5), "y": np.arange(3)}, 0, ctx())
    assert (status, ct) == (200, "application/json")
    assert orjson.loads(body) == {"x": 1.5, "y": [0, 1, 2]}


def test_encode_bytes_str_and_context_overrides():
    c = ctx()
    assert encode_response(b"\x01", 0, c)[:3] == [200, "application/octet-stream", b"\x01"]
    assert encode_response("hi", 0, c)[:3] == [200, "text/plain; charset=utf-8", b"hi"]
    c.set_response_content_type(0, "image/png")
    c.set_response_status(201, idx=0)
    c.set_response_header(0, "X-Extra", "1")
    assert encode_response(b"png", 0, c) == [201, "image/png", b"png", {"x-extra": "1"}]


@pytest.mark.parametrize(
    ("exc", "status", "kind", "text"),
    [
        (BadInputError("bad shape"), 400, "BadRequestException", "bad shape"),
        (PredictionException("teapot", 418), 418, "BadRequestException", "teapot"),
        (RuntimeError("boom"), 500, "InternalServerException", "RuntimeError: boom"),
        (MemoryError(), 507, "InternalServerException", "Out of resources"),
    ],
)
def test_errors_carry_status_and_torchserve_shape(exc, status, kind, text):
    code, ct, body, _ = error_response(exc)
    err = orjson.loads(body)
    assert code == status and ct == "application/json"
    assert err["code"] == status and err["type"] == kind and text in err["message"]


def test_unserialisable_result_is_an_error_response():
    status, _, body, _ = encode_response({"x": object()}, 0, ctx())
    assert status == 500 and b"cannot be encoded" in body


@pytest.mark.parametrize(("status", "header", "message"), [
    (999, None, "status 999 is not an integer from 200 to 599"),
    (0, None, "status 0"),
    ("201", None, "status '201'"),
    (200.5, None, "status 200.5"),
    (101, None, "status 101"),
    (200, ("bad key", "v"), "header name 'bad key' is not an HTTP token"),
    (200, ("x-a", "v\r\nx-evil: 1"), "control characters"),
    (200, ("x-a", "nul\x00"), "control characters"),
    (200, ("x-a", "café€"), "outside Latin-1"),
])
def test_a_status_or_header_http_cannot_carry_is_an_error_response(status, header, message):
    """These reached the frontend and broke the connection (no response at all), or a 500
    with a traceback; now the request gets a 500 that says what the handler did."""
    c = ctx()
    c.set_response_status(status, idx=0)
    if header:
        c.set_response_header(0, *header)
    code, _, body, _ = encode_response({"ok": 1}, 0, c)
    assert code == 500
    assert "the handler's response cannot be sent" in orjson.loads(body)["message"]
    assert message in orjson.loads(body)["message"]


def test_framing_headers_are_the_servers_and_no_body_statuses_send_none():
    c = ctx()
    c.set_response_header(0, "Content-Length", "5000")  # would truncate the real body
    c.set_response_header(0, "Transfer-Encoding", "chunked")
    c.set_response_header(0, "x-fine", "café")  # Latin-1 is allowed
    assert encode_response(b"abc", 0, c) == [200, "application/octet-stream", b"abc",
                                             {"x-fine": "café"}]
    c.set_response_status(204, idx=0)
    assert encode_response({"ignored": 1}, 0, c)[0:3] == [204, "text/plain", b""]
