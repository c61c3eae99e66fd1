"""OIP datatypes, validation of tensors against them, and numpy conversion.

Validation runs before anything is allocated from a declared shape: the element
count is computed with overflow checks and compared against the bytes that were
actually received.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from infergw.vocab.errors import InvalidArgument
from infergw.vocab.types import Tensor

# OIP datatype -> numpy dtype (little-endian). BYTES is variable-size.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = frozenset([*NUMPY_DTYPES, "BYTES"])
MAX_ELEMENTS = 1 << 40  # far beyond any message limit; guards against absurd shapes


def element_size(datatype: str) -> int | None:
    """Bytes per element, or None for BYTES."""
    dtype = NUMPY_DTYPES.get(datatype)
    return None if dtype is None else dtype.itemsize


def element_count(shape: Sequence[int], what: str = "tensor") -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(f"{what}: shape {list(shape)} has a negative dimension")
        count *= dim
        if count > MAX_ELEMENTS:
            raise InvalidArgument(f"{what}: shape {list(shape)} is too large")
    return count


def check_datatype(datatype: str, what: str) -> None:
    if datatype not in DATATYPES:
        raise InvalidArgument(
            f"{what}: unsupported datatype {datatype!r}; expected one of {sorted(DATATYPES)}"
        )


def expected_nbytes(datatype: str, shape: Sequence[int], what: str) -> int | None:
    """Byte size implied by shape x datatype (None for BYTES, whose size varies)."""
    check_datatype(datatype, what)
    count = element_count(shape, what)
    size = element_size(datatype)
    return None if size is None else count * size


def validate_tensor(tensor: Tensor) -> None:
    """Check that ``tensor.data`` is exactly what shape x datatype declares."""
    what = f"input {tensor.name!r}"
    expected = expected_nbytes(tensor.datatype, tensor.shape, what)
    if expected is None:
        count = element_count(tensor.shape, what)
        found = count_bytes_elements(tensor.data, what)
        if found != count:
            raise InvalidArgument(
                f"{what}: shape {list(tensor.shape)} needs {count} BYTES elements, got {found}"
            )
    elif len(tensor.data) != expected:
        raise InvalidArgument(
            f"{what}: shape {list(tensor.shape)} with datatype {tensor.datatype} needs "
            f"{expected} bytes, got {len(tensor.data)}"
        )


def count_bytes_elements(data: bytes | memoryview, what: str) -> int:
    """Count length-prefixed elements in OIP raw BYTES layout, checking bounds."""
    view = memoryview(data)
    offset, count, end = 0, 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidArgument(f"{what}: truncated BYTES element length at offset {offset}")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4 + length
        if offset > end:
            raise InvalidArgument(f"{what}: BYTES element overruns the data at offset {offset}")
        count += 1
    return count


def serialize_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def deserialize_bytes(data: bytes | memoryview) -> list[bytes]:
    view = memoryview(data)
    items, offset = [], 0
    while offset < len(view):
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    for name, dtype in NUMPY_DTYPES.items():
        if array.dtype.newbyteorder("<") == dtype:
            return name
    raise InvalidArgument(f"numpy dtype {array.dtype} has no OIP datatype")


def tensor_from_numpy(name: str, array: np.ndarray[Any, Any]) -> Tensor:
    datatype = datatype_of(array)
    if datatype == "BYTES":
        items = [x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1)]
        data = serialize_bytes(items)
    else:
        data = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()
    return Tensor(name=name, datatype=datatype, shape=tuple(array.shape), data=data)


def tensor_to_numpy(tensor: Tensor) -> np.ndarray[Any, Any]:
    if tensor.datatype == "BYTES":
        return np.array(deserialize_bytes(tensor.data), dtype=np.object_).reshape(tensor.shape)
    dtype = NUMPY_DTYPES[tensor.datatype]
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tensor.shape)
