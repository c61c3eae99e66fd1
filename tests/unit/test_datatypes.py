import numpy as np
import pytest

from infergw.vocab.datatypes import (
    deserialize_bytes,
    serialize_bytes,
    tensor_from_numpy,
    tensor_to_numpy,
    validate_tensor,
)
from infergw.vocab.errors import InvalidArgument
from infergw.vocab.types import Tensor


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.arange(4, dtype=np.int64).reshape(1, 4),
        np.array([True, False]),
        np.array([b"a", b"", b"hello"], dtype=np.object_),
        np.zeros((0, 3), dtype=np.float16),
    ],
)
def test_numpy_round_trip(array: np.ndarray) -> None:
    tensor = tensor_from_numpy("x", array)
    validate_tensor(tensor)
    back = tensor_to_numpy(tensor)
    assert back.shape == array.shape
    assert back.tolist() == array.tolist()


def test_bytes_layout_is_length_prefixed_little_endian() -> None:
    assert serialize_bytes([b"ab", b""]) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
    assert deserialize_bytes(b"\x02\x00\x00\x00ab\x00\x00\x00\x00") == [b"ab", b""]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (Tensor("x", "FP32", (2, 2), b"\0" * 12), "needs 16 bytes, got 12"),
        (Tensor("x", "FLOAT", (1,), b"\0" * 4), "unsupported datatype 'FLOAT'"),
        (Tensor("x", "FP32", (-1, 2), b""), "negative dimension"),
        (Tensor("x", "FP32", (1 << 30, 1 << 30), b""), "too large"),
        (Tensor("x", "BYTES", (2,), serialize_bytes([b"a"])), "needs 2 BYTES elements, got 1"),
        (Tensor("x", "BYTES", (1,), b"\x05\0\0\0ab"), "overruns"),
        (Tensor("x", "BYTES", (1,), b"\x01\0"), "truncated"),
    ],
)
def test_validation_names_the_problem(tensor: Tensor, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_tensor(tensor)
