"""modelserve.jsonc: orjson, with NaN and ±Infinity as Python's json reads and writes them."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from modelserve import jsonc


def test_reads_non_finite_tokens():
    nan, inf, ninf, one = jsonc.loads(b"[NaN, Infinity, -Infinity, 1]")
    assert math.isnan(nan) and (inf, ninf, one) == (math.inf, -math.inf, 1)
    assert jsonc.loads('{"a": NaN}')["a"] != 0


@pytest.mark.parametrize("text", [b"[NaN,", b"[nan]", b"{NaN: 1}", b"[Infinity] x", b"[1,]"])
def test_other_invalid_json_keeps_orjsons_error(text):
    with pytest.raises(orjson.JSONDecodeError):
        jsonc.loads(text)


def test_writes_non_finite_as_tokens_and_none_as_null():
    assert jsonc.dumps({"p": math.nan, "q": [1.5, -math.inf], "r": None}) == \
        b'{"p":NaN,"q":[1.5,-Infinity],"r":null}'


def test_finite_values_are_orjsons_bytes():
    doc = {"p": np.float32(0.1), "a": np.arange(3, dtype=np.float32), "r": None, "s": "NaN"}
    option = orjson.OPT_SERIALIZE_NUMPY
    assert jsonc.dumps(doc, default=lambda x: x.tolist(), option=option) == \
        orjson.dumps(doc, option=option)


def test_numpy_non_finite_through_default():
    doc = {"a": np.array([np.nan, 1.0], dtype=np.float32)}
    out = jsonc.dumps(doc, default=lambda x: x.tolist(), option=orjson.OPT_SERIALIZE_NUMPY)
    assert out == b'{"a":[NaN,1.0]}'
