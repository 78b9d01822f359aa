"""Open Inference Protocol v2 datatypes <-> numpy, and the BYTES wire format.

Both processes import this (no torch): the frontend to check and encode tensors, the worker
to turn raw tensor bytes into arrays. Raw tensor data is little-endian, row-major, unpadded;
BOOL is one byte; a BYTES element is a 4-byte little-endian length followed by its bytes.
numpy is imported only by the functions that build arrays: the frontend checks binary
tensors by size alone and imports numpy on its first JSON tensor, not at start.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

ITEMSIZE: dict[str, int] = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8,
    "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8,
    "BYTES": 0,  # variable: length-prefixed elements
}
DATATYPES = tuple(ITEMSIZE)
_NUMPY_NAMES = {
    "BOOL": "bool", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "BYTES": "object",
}
_LENGTH = struct.Struct("<I")


class TensorError(ValueError):
    """A tensor whose datatype, shape and data do not agree (the client's fault: a 400)."""


@cache
def numpy_dtype(datatype: str) -> np.dtype:
    import numpy as np

    name = _NUMPY_NAMES.get(datatype)
    if name is None:
        raise TensorError(
            f"unsupported datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    return np.dtype(name)


def datatype_of(dtype: np.dtype) -> str:
    """The protocol's name for a numpy dtype (strings and objects are BYTES)."""
    if dtype.kind in "OSU":
        return "BYTES"
    for name in DATATYPES[:-1]:
        if numpy_dtype(name).kind == dtype.kind and ITEMSIZE[name] == dtype.itemsize:
            return name
    raise TensorError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


def element_count(shape: Sequence[int]) -> int:
    if any(type(d) is not int or d < 0 for d in shape):  # bool is an int subclass: refused
        raise TensorError(f"invalid shape {list(shape)}: dimensions must be integers >= 0")
    return math.prod(shape)


def serialize_bytes(items: np.ndarray) -> bytes:
    """BYTES elements (bytes or str) as length-prefixed raw data."""
    parts: list[bytes] = []
    for item in items.ravel():
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _bytes_elements(raw: bytes | memoryview, count: int) -> list[bytes]:
    """``count`` length-prefixed elements; the data must hold exactly that many."""
    view = memoryview(raw)
    out: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(view):
            raise TensorError(f"BYTES data holds fewer than the {count} elements of its shape")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise TensorError("BYTES element length runs past the end of the tensor data")
        out.append(bytes(view[offset:offset + length]))
        offset += length
    if offset != len(view):
        raise TensorError(f"BYTES data has {len(view) - offset} bytes after its {count} elements")
    return out


def deserialize_bytes(raw: bytes | memoryview, count: int) -> np.ndarray:
    import numpy as np

    out = np.empty(count, dtype=object)
    out[:] = _bytes_elements(raw, count)
    return out


def check_raw_size(datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> None:
    """Fixed-size datatypes: the byte count must be exactly elements x itemsize."""
    if datatype == "BYTES":
        _bytes_elements(raw, element_count(shape))
        return
    if datatype not in ITEMSIZE:
        raise TensorError(f"unsupported datatype {datatype!r}")
    expected = element_count(shape) * ITEMSIZE[datatype]
    if len(raw) != expected:
        raise TensorError(
            f"{len(raw)} bytes of data for a {datatype} tensor of shape {list(shape)}; "
            f"expected {expected}"
        )


def to_numpy(datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> np.ndarray:
    """A read-only view of raw tensor data (BYTES: an object array of bytes)."""
    import numpy as np

    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(raw, count).reshape(shape)
    check_raw_size(datatype, shape, raw)
    return np.frombuffer(raw, dtype=numpy_dtype(datatype), count=count).reshape(shape)


def from_numpy(array: np.ndarray) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw bytes) of an array."""
    import numpy as np

    datatype = datatype_of(array.dtype)
    if datatype == "BYTES":
        return datatype, list(array.shape), serialize_bytes(array)
    dtype = numpy_dtype(datatype)
    return datatype, list(array.shape), np.ascontiguousarray(array, dtype=dtype).tobytes()


_EXACT_KINDS = "iub"  # integer and BOOL tensors: JSON floats are not silently truncated


def from_json_data(datatype: str, shape: Sequence[int], data: Any) -> bytes:
    """Raw bytes of a JSON ``data`` field (flat or nested, row-major)."""
    import numpy as np

    count = element_count(shape)
    if datatype == "BYTES":
        try:
            items = np.asarray(data, dtype=object).ravel()
        except ValueError as exc:
            raise TensorError(f"BYTES data is not a (nested) list of strings: {exc}") from None
        if items.size != count:
            raise TensorError(f"{items.size} BYTES elements for shape {list(shape)} "
                              f"({count} expected)")
        if any(not isinstance(x, str) for x in items):
            raise TensorError("BYTES data in JSON must be strings")
        return serialize_bytes(items)
    dtype = numpy_dtype(datatype)
    try:
        # 1.7 is not an INT32, nor 0.5 a BOOL: look at what JSON held before converting
        found = np.asarray(data) if dtype.kind in _EXACT_KINDS else None
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise TensorError(f"{datatype} data is not a (nested) list of numbers: {exc}") from None
    if found is not None and found.size:
        if dtype.kind == "b" and found.dtype.kind != "b":
            raise TensorError(f"{datatype} data must be true/false")
        # numbers past int64 come back as floats: those must equal what was converted
        if found.dtype.kind == "f" and not np.array_equal(found, array):
            raise TensorError(f"{datatype} data must be integers")
    if array.size != count:
        raise TensorError(
            f"{array.size} {datatype} values for shape {list(shape)} ({count} expected)"
        )
    return array.tobytes()
