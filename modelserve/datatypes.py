"""Open Inference Protocol v2 datatypes <-> numpy, and the BYTES wire format.

Both processes import this (no torch): the frontend to check and encode tensors, the worker
to turn raw tensor bytes into arrays. Raw tensor data is little-endian, row-major, unpadded;
BOOL is one byte; a BYTES element is a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DTYPES.items() if name != "BYTES"}
_LENGTH = struct.Struct("<I")


class TensorError(ValueError):
    """A tensor whose datatype, shape and data do not agree (the client's fault: a 400)."""


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return DTYPES[datatype]
    except KeyError:
        raise TensorError(
            f"unsupported datatype {datatype!r}; expected one of {', '.join(DTYPES)}"
        ) from None


def datatype_of(dtype: np.dtype) -> str:
    """The protocol's name for a numpy dtype (strings and objects are BYTES)."""
    if dtype.kind in "OSU":
        return "BYTES"
    name = _BY_KIND.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise TensorError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return name


def element_count(shape: Sequence[int]) -> int:
    if any(not isinstance(d, int) or d < 0 for d in shape):
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


def deserialize_bytes(raw: bytes | memoryview, count: int) -> np.ndarray:
    """``count`` length-prefixed elements; the data must hold exactly that many."""
    view = memoryview(raw)
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise TensorError(f"BYTES data holds fewer than the {count} elements of its shape")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise TensorError("BYTES element length runs past the end of the tensor data")
        out[i] = bytes(view[offset:offset + length])
        offset += length
    if offset != len(view):
        raise TensorError(f"BYTES data has {len(view) - offset} bytes after its {count} elements")
    return out


def check_raw_size(datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> None:
    """Fixed-size datatypes: the byte count must be exactly elements x itemsize."""
    if datatype == "BYTES":
        deserialize_bytes(raw, element_count(shape))
        return
    expected = element_count(shape) * numpy_dtype(datatype).itemsize
    if len(raw) != expected:
        raise TensorError(
            f"{len(raw)} bytes of data for a {datatype} tensor of shape {list(shape)}; "
            f"expected {expected}"
        )


def to_numpy(datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> np.ndarray:
    """A read-only view of raw tensor data (BYTES: an object array of bytes)."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(raw, count).reshape(shape)
    check_raw_size(datatype, shape, raw)
    return np.frombuffer(raw, dtype=numpy_dtype(datatype), count=count).reshape(shape)


def from_numpy(array: np.ndarray) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw bytes) of an array."""
    datatype = datatype_of(array.dtype)
    if datatype == "BYTES":
        return datatype, list(array.shape), serialize_bytes(array)
    dtype = DTYPES[datatype]
    return datatype, list(array.shape), np.ascontiguousarray(array, dtype=dtype).tobytes()


def from_json_data(datatype: str, shape: Sequence[int], data: object) -> bytes:
    """Raw bytes of a JSON ``data`` field (flat or nested, row-major)."""
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
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise TensorError(f"{datatype} data is not a (nested) list of numbers: {exc}") from None
    if array.size != count:
        raise TensorError(
            f"{array.size} {datatype} values for shape {list(shape)} ({count} expected)"
        )
    return array.tobytes()
