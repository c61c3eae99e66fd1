"""The OIP REST/JSON codec: round trips both ways, and every bad input is a clear 400."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest

from infergw.vocab.datatypes import tensor_from_numpy, tensor_to_numpy
from infergw.vocab.errors import BackendError, InvalidArgument
from infergw.vocab.types import InferRequest, InferResponse, RequestedOutput, Tensor
from infergw.wire import json_numbers, oip_json
from infergw.wire.oip_json import (
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
)

ARRAYS = {
    "fp32": np.arange(12, dtype=np.float32).reshape(3, 4) / 3,
    "int64": np.array([[-(2**62), 0, 2**62]], dtype=np.int64),
    "bytes": np.array([b"hello", "h\u00e9llo".encode(), b""], dtype=np.object_),
    "bool": np.array([[True, False], [False, True]]),
    "fp16": np.array([1.5, -2.25], dtype=np.float16),
    "uint8": np.array([0, 255], dtype=np.uint8),
}


def _request(**kwargs: Any) -> InferRequest:
    inputs = tuple(tensor_from_numpy(name, array) for name, array in ARRAYS.items())
    return InferRequest(model="m", inputs=inputs, **kwargs)


def _arrays(tensors: tuple[Tensor, ...]) -> dict[str, np.ndarray]:
    return {t.name: tensor_to_numpy(t) for t in tensors}


def _assert_same(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert found.keys() == expected.keys()
    for name, array in expected.items():
        assert found[name].dtype == array.dtype, name
        np.testing.assert_array_equal(found[name], array, err_msg=name)


def _decode(doc: dict[str, Any], blobs: bytes = b"") -> InferRequest:
    head = json.dumps(doc).encode()
    return decode_infer_request("m", "", head + blobs, len(head) if blobs else None)


def _input(**fields: Any) -> dict[str, Any]:
    """A valid JSON input; a field given as None is left out."""
    base = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0], **fields}
    return {k: v for k, v in base.items() if v is not None}


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_request_round_trip(binary: bool) -> None:
    request = _request(id="req-1", parameters={"priority": 2})
    body, header_length = encode_infer_request(request, binary_inputs=binary)
    assert (header_length is not None) is binary

    decoded = decode_infer_request("m", "3", body, header_length)

    _assert_same(_arrays(decoded.inputs), ARRAYS)
    assert decoded.id == "req-1"
    assert decoded.version == "3"
    assert decoded.parameters == {"priority": 2, "binary_data_output": True}


def test_binary_inputs_are_views_of_the_body_not_copies() -> None:
    body, header_length = encode_infer_request(_request())
    decoded = decode_infer_request("m", "", body, header_length)
    data = decoded.inputs[0].data
    assert isinstance(data, memoryview)
    assert data.obj is body


@pytest.mark.parametrize("binary", [True, False])
def test_response_round_trip(binary: bool) -> None:
    request = InferRequest("m", (), parameters={"binary_data_output": binary})
    outputs = tuple(tensor_from_numpy(name, array) for name, array in ARRAYS.items())
    response = InferResponse("m", outputs, version="1", id="r", parameters={"k": "v"})

    body, header_length = encode_infer_response(response, request)
    assert (header_length is not None) is binary
    decoded = decode_infer_response(body, header_length)

    _assert_same(_arrays(decoded.outputs), ARRAYS)
    assert (decoded.model, decoded.version, decoded.id) == ("m", "1", "r")
    assert decoded.parameters == {"k": "v"}


def test_response_sends_only_requested_outputs_each_as_asked() -> None:
    outputs = tuple(tensor_from_numpy(name, array) for name, array in ARRAYS.items())
    request = InferRequest(
        "m",
        (),
        outputs=(
            RequestedOutput("bytes", {"binary_data": False}),
            RequestedOutput("fp32"),  # falls back to binary_data_output
        ),
        parameters={"binary_data_output": True},
    )
    body, header_length = encode_infer_response(InferResponse("m", outputs), request)

    assert header_length is not None
    header = json.loads(body[:header_length])
    assert [o["name"] for o in header["outputs"]] == ["bytes", "fp32"]
    assert header["outputs"][0]["data"] == ["hello", "h\u00e9llo", ""]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 48}
    assert len(body) == header_length + 48


def test_json_request_data_may_be_nested_or_flat() -> None:
    flat = _decode({"inputs": [_input(shape=[2, 2], data=[1, 2, 3, 4])]})
    nested = _decode({"inputs": [_input(shape=[2, 2], data=[[1, 2], [3, 4]])]})
    assert bytes(flat.inputs[0].data) == bytes(nested.inputs[0].data)
    assert bytes(flat.inputs[0].data) == np.array([1, 2, 3, 4], "<f4").tobytes()


def test_mixed_binary_and_json_inputs_with_requested_outputs() -> None:
    blob = np.array([7, 8], "<i4").tobytes()
    request = _decode(
        {
            "id": "a",
            "inputs": [
                _input(name="j"),
                {
                    "name": "b",
                    "datatype": "INT32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 8},
                },
            ],
            "outputs": [{"name": "out", "parameters": {"binary_data": True}}],
        },
        blob,
    )
    assert [t.name for t in request.inputs] == ["j", "b"]
    assert bytes(request.inputs[1].data) == blob
    assert request.inputs[1].parameters == {}  # binary_data_size is framing, not a parameter
    assert request.outputs == (RequestedOutput("out", {"binary_data": True}),)


def test_requested_binary_outputs_are_encoded_per_output() -> None:
    request = InferRequest(
        "m", (tensor_from_numpy("x", ARRAYS["fp32"]),), outputs=(RequestedOutput("y"),)
    )
    body, header_length = encode_infer_request(request, binary_inputs=False, binary_outputs=True)
    assert header_length is None
    doc = json.loads(body)
    assert doc["outputs"] == [{"name": "y", "parameters": {"binary_data": True}}]
    assert "parameters" not in doc


# -- bad requests -----------------------------------------------------------------------

BAD_DOCS = [
    pytest.param({"outputs": []}, "missing required field 'inputs'", id="no-inputs"),
    pytest.param({"inputs": {}}, "'inputs' must be an array", id="inputs-not-array"),
    pytest.param({"inputs": [1]}, "input #0 must be a JSON object", id="input-not-object"),
    pytest.param({"inputs": [_input(name=None)]}, "missing required field 'name'", id="no-name"),
    pytest.param({"inputs": [_input(datatype=None)]}, "'datatype'", id="no-datatype"),
    pytest.param({"inputs": [_input(shape=None)]}, "missing required field 'shape'", id="no-shape"),
    pytest.param(
        {"inputs": [_input(datatype="FP8")]}, "unsupported datatype 'FP8'", id="bad-dtype"
    ),
    pytest.param({"inputs": [_input(shape=[2, -1])]}, "negative dimension", id="negative-dim"),
    pytest.param({"inputs": [_input(shape=[2.5])]}, "array of integers", id="float-dim"),
    pytest.param({"inputs": [_input(shape=[3])]}, "needs 3 elements, 'data' has 2", id="count"),
    pytest.param({"inputs": [_input(shape=[1 << 30] * 3)]}, "too large", id="huge-shape"),
    pytest.param({"inputs": [_input(data=[[1.0], [2.0, 3.0]])]}, "regular nested", id="ragged"),
    pytest.param({"inputs": [_input(data=["a", "b"])]}, "must hold FP32", id="str-as-fp32"),
    pytest.param({"inputs": [_input(datatype="INT8", data=[1, 300])]}, "out of range", id="range"),
    pytest.param({"inputs": [_input(datatype="INT32", data=[1.5, 2])]}, "got floats", id="frac"),
    pytest.param({"inputs": [_input(datatype="BOOL", data=[1, 0])]}, "got integers", id="bool"),
    pytest.param({"inputs": [_input(datatype="BYTES", data=[1, 2])]}, "strings", id="bytes"),
    pytest.param({"inputs": [_input(data=None)]}, "neither 'data' nor", id="no-data"),
    pytest.param(
        {"inputs": [_input(parameters={"binary_data_size": 8})]}, "both 'data' and", id="both"
    ),
    pytest.param({"inputs": [_input(parameters=[1])]}, "must be an object", id="params-list"),
    pytest.param(
        {"inputs": [_input()], "parameters": {"a": {"b": 1}}}, "boolean, number or string", id="p"
    ),
    pytest.param(
        {"inputs": [_input()], "parameters": {"binary_data_output": 1}}, "must be a bool", id="bdo"
    ),
    pytest.param(
        {"inputs": [_input()], "outputs": [{"name": "y", "parameters": {"binary_data": "x"}}]},
        "must be a bool",
        id="binary-data-flag",
    ),
    pytest.param({"inputs": [_input()], "id": 5}, "'id' must be a string", id="id"),
]


@pytest.mark.parametrize(("doc", "message"), BAD_DOCS)
def test_bad_request_documents(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _decode(doc)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"inputs": [', "malformed JSON"),
        (b"\xff\xfe\x00garbage", "malformed JSON"),
        (b"[1, 2]", "must be an object"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
    ],
    ids=["truncated", "not-utf8", "not-object", "deeply-nested"],
)
def test_malformed_json(body: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_infer_request("m", "", body, None)


def _binary_doc(size: Any, shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": shape or [2],
                "parameters": {"binary_data_size": size},
            }
        ]
    }


@pytest.mark.parametrize(
    ("doc", "blobs", "header_delta", "message"),
    [
        (_binary_doc(8), b"\0" * 8, 9, "outside the"),
        (_binary_doc(8), b"\0" * 8, -10_000, "outside the"),
        (_binary_doc(8), b"\0" * 4, 0, "runs past the end"),
        (_binary_doc(8), b"\0" * 12, 0, "binary section has 12 bytes but .* add up to 8"),
        (_binary_doc(12), b"\0" * 12, 0, r"shape \[2\] with datatype FP32 needs 8 bytes, got 12"),
        (_binary_doc(-1), b"", 0, "non-negative integer"),
        (_binary_doc(True), b"", 0, "non-negative integer"),
        (_binary_doc(0, [1 << 40, 1 << 40]), b"", 0, "too large"),
    ],
    ids=[
        "header-beyond-body",
        "header-negative",
        "blob-past-end",
        "extra-bytes",
        "size-vs-shape",
        "negative-size",
        "bool-size",
        "huge-shape-checked-first",
    ],
)
def test_bad_binary_framing(
    doc: dict[str, Any], blobs: bytes, header_delta: int, message: str
) -> None:
    head = json.dumps(doc).encode()
    with pytest.raises(InvalidArgument, match=message):
        decode_infer_request("m", "", head + blobs, len(head) + header_delta)


def test_binary_size_without_binary_section() -> None:
    with pytest.raises(InvalidArgument, match="runs past the end of the 0-byte binary section"):
        decode_infer_request("m", "", json.dumps(_binary_doc(8)).encode(), None)


# -- bad responses and outputs ----------------------------------------------------------


def test_malformed_response_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match=r"malformed inference response: .*malformed JSON"):
        decode_infer_response(b"{", None)
    doc = {"outputs": [{"name": "o", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}
    with pytest.raises(BackendError, match="needs 2 elements"):
        decode_infer_response(json.dumps(doc).encode(), None)


def test_binary_bytes_response_with_wrong_element_count() -> None:
    blob = tensor_from_numpy("o", np.array([b"a"], dtype=np.object_)).data
    doc = {
        "outputs": [
            {"name": "o", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 5}}
        ]
    }
    head = json.dumps(doc).encode()
    with pytest.raises(BackendError, match="needs 2 BYTES elements, got 1"):
        decode_infer_response(head + bytes(blob), len(head))


def test_backend_output_not_matching_its_shape_is_a_backend_error() -> None:
    response = InferResponse("m", (Tensor("o", "FP32", (4,), b"\0" * 8),))
    for binary in (True, False):
        request = InferRequest("m", (), parameters={"binary_data_output": binary})
        with pytest.raises(BackendError, match=r"output 'o': shape \[4\] .* needs 16 bytes, got 8"):
            encode_infer_response(response, request)


def test_missing_requested_output_is_a_backend_error() -> None:
    response = InferResponse("m", (Tensor("o", "FP32", (1,), b"\0" * 4),))
    request = InferRequest("m", (), outputs=(RequestedOutput("other"),))
    with pytest.raises(BackendError, match="returned no output 'other'"):
        encode_infer_response(response, request)


def test_non_utf8_bytes_output_cannot_go_as_json() -> None:
    response = InferResponse("m", (tensor_from_numpy("o", np.array([b"\xff"], dtype=np.object_)),))
    with pytest.raises(InvalidArgument, match=r"not valid UTF-8.*binary_data=true"):
        encode_infer_response(response, InferRequest("m", ()))
    body, header_length = encode_infer_response(
        response, InferRequest("m", (), parameters={"binary_data_output": True})
    )
    assert tensor_to_numpy(decode_infer_response(body, header_length).outputs[0])[0] == b"\xff"


# -- issue 9 item 1: what other wires cannot carry is refused here, naming the field --------
_TENSOR = b'"name":"x","datatype":"FP32","shape":[1],"data":[1.0]'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"parameters":{"foo":9223372036854775808},"inputs":[{' + _TENSOR + b"}]}", "'foo'"),
        (b'{"parameters":{"foo":18446744073709551615},"inputs":[{' + _TENSOR + b"}]}", "'foo'"),
        (
            b'{"parameters":{"timeout":9223372036854775808},"inputs":[{' + _TENSOR + b"}]}",
            "'timeout'",
        ),
        (b'{"inputs":[{' + _TENSOR + b',"parameters":{"p":18446744073709551615}}]}', "'p'"),
        (
            b'{"inputs":[{'
            + _TENSOR
            + b'}],"outputs":[{"name":"o","parameters":{"q":9223372036854775808}}]}',
            "'q'",
        ),
        (
            b'{"id":"\\ud800","inputs":[{' + _TENSOR + b"}]}",
            "field 'id' holds a lone UTF-16 surrogate",
        ),
        (b'{"parameters":{"s":"a\\udfff"},"inputs":[{' + _TENSOR + b"}]}", "'parameters.s'"),
        (
            b'{"inputs":[{"name":"t","datatype":"BYTES","shape":[2],"data":["ok","\\ud83d"]}]}',
            r"'inputs\[0\].data\[1\]'",
        ),
        (
            b'{"inputs":[{"name":"\\udc00","datatype":"FP32","shape":[1],"data":[1]}]}',
            r"'inputs\[0\].name'",
        ),
    ],
    ids=[
        "int64-max+1",
        "uint64-max",
        "timeout-2^63",
        "input-parameter",
        "output-parameter",
        "surrogate-id",
        "surrogate-parameter",
        "surrogate-bytes-data",
        "surrogate-name",
    ],
)
def test_values_other_wires_cannot_carry_are_400s_naming_the_field(
    body: bytes, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_infer_request("m", "", body, None)


def test_int64_bounds_and_big_doubles_are_accepted() -> None:
    """The int64 bounds pass, and so do doubles written as doubles, however large."""
    body = b'{"parameters":{"a":9223372036854775807,"b":-9223372036854775808,'
    body += b'"c":1.8446744073709552e19,"d":-1e30,"e":1e19},'
    request = decode_infer_request("m", "", body + b'"inputs":[{' + _TENSOR + b"}]}", None)
    assert request.parameters == {
        "a": 2**63 - 1,
        "b": -(2**63),
        "c": 2.0**64,
        "d": -1e30,
        "e": 1e19,
    }


# -- exact 64-bit integers (issue 9, issue 10 item 6) -------------------------------------
# orjson reads integer literals beyond [-2**63, 2**64 - 1] as floats, and numpy reads a
# list mixing ints below 2**63 and above as float64: neither may round an integer.


def _int_body(datatype: str, data: str, shape: int) -> bytes:
    tensor = f'"name":"x","datatype":"{datatype}","shape":[{shape}],"data":{data}'
    return b'{"inputs":[{' + tensor.encode() + b"}]}"


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("UINT64", "[0,7,18446744073709551615]", [0, 7, 2**64 - 1]),
        ("UINT64", "[9223372036854775808,1]", [2**63, 1]),
        ("UINT64", "[18446744073709551615,9223372036854775807]", [2**64 - 1, 2**63 - 1]),
        ("INT64", "[-9223372036854775808,0,9223372036854775807]", [-(2**63), 0, 2**63 - 1]),
        ("UINT64", "[[0,18446744073709551615],[1,2]]", [0, 2**64 - 1, 1, 2]),
        ("UINT64", "[[]]", []),
    ],
    ids=["uint64-mixed", "uint64-2^63", "uint64-both-halves", "int64-bounds", "nested", "empty"],
)
def test_64_bit_integer_data_is_exact(datatype: str, data: str, expected: list[int]) -> None:
    request = decode_infer_request("m", "", _int_body(datatype, data, len(expected)), None)
    assert tensor_to_numpy(request.inputs[0]).ravel().tolist() == expected


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("UINT64", "[0,18446744073709551616]", "'x': 'data' has values out of range for UINT64"),
        ("UINT64", "[-1,18446744073709551615]", "out of range for UINT64"),
        ("INT64", "[-1,9223372036854775808]", "out of range for INT64"),
        ("INT64", "[-9223372036854775809,5]", "out of range for INT64"),
        ("INT64", "[123456789012345678901234567890,1]", "out of range for INT64"),
        ("INT32", "[1,4294967296]", "out of range for INT32"),
        ("UINT64", "[1e19,18446744073709551615]", "must hold UINT64 values, got floats"),
        ("UINT64", "[1.5,18446744073709551615]", "must hold UINT64 values, got floats"),
        ("UINT64", '["1",18446744073709551615]', "got other values"),
    ],
    ids=[
        "past-uint64",
        "negative-uint64",
        "int64-max+1-mixed",
        "int64-min-1",
        "30-digits",
        "int32",
        "double-literal",
        "fraction",
        "string",
    ],
)
def test_integer_data_beyond_its_datatype_is_a_400(datatype: str, data: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_infer_request("m", "", _int_body(datatype, data, 2), None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"parameters":{"c":18446744073709551616},"inputs":[{' + _TENSOR + b"}]}", "'c'"),
        (b'{"parameters":{"d":-9223372036854775809},"inputs":[{' + _TENSOR + b"}]}", "'d'"),
        (b'{"parameters":{"e":1' + b"0" * 40 + b'},"inputs":[{' + _TENSOR + b"}]}", "'e'"),
        (b'{"inputs":[{' + _TENSOR + b',"parameters":{"p":18446744073709551616}}]}', "'p'"),
        (
            b'{"inputs":[{'
            + _TENSOR
            + b'}],"outputs":[{"name":"o","parameters":{"q":-18446744073709551616}}]}',
            "'q'",
        ),
    ],
    ids=["past-uint64", "below-int64", "41-digits", "input-parameter", "output-parameter"],
)
def test_integer_parameters_past_64_bits_are_400s_naming_them(body: bytes, field: str) -> None:
    """orjson gives such a literal as a float a parameter would take: it is read exactly."""
    with pytest.raises(InvalidArgument, match=f"parameter {field} is outside the 64-bit"):
        decode_infer_request("m", "", body, None)


def test_uint64_json_outputs_are_written_exactly() -> None:
    values = np.array([0, 7, 2**64 - 1, 2**63], dtype=np.uint64)
    response = InferResponse(model="m", outputs=(tensor_from_numpy("out", values),))
    body, _ = encode_infer_response(response, InferRequest(model="m", inputs=()))
    assert json.loads(body)["outputs"][0]["data"] == [0, 7, 2**64 - 1, 2**63]


def test_non_finite_json_outputs_keep_nan_and_infinity() -> None:
    """orjson would write NaN as null; such data goes through the stdlib writer instead."""
    values = np.array([1.5, np.nan, np.inf, -np.inf], dtype=np.float32)
    response = InferResponse(model="m", outputs=(tensor_from_numpy("out", values),))
    body, header_length = encode_infer_response(response, InferRequest(model="m", inputs=()))
    assert header_length is None and b"NaN" in body and b"null" not in body
    np.testing.assert_array_equal(
        np.array(json.loads(body)["outputs"][0]["data"], np.float32), values
    )


def test_json_outputs_are_written_from_numpy_with_float32_precision() -> None:
    values = np.array([0.1, 1 / 3], dtype=np.float32)
    response = InferResponse(model="m", outputs=(tensor_from_numpy("out", values),))
    body, _ = encode_infer_response(response, InferRequest(model="m", inputs=()))
    data = json.loads(body)["outputs"][0]["data"]
    np.testing.assert_array_equal(np.array(data, np.float32), values)


# -- big number arrays are read in pieces (json_numbers) -----------------------------------
# Lifted reading must accept and refuse exactly what reading the whole document does.
# The thresholds are lowered so that small documents take the lifted path, in small pieces.


def _read(body: bytes, header_length: int | None = None) -> Any:
    try:
        request = decode_infer_request("m", "", body, header_length)
    except InvalidArgument as exc:
        return ("400", exc.message)
    return [(t.name, t.datatype, t.shape, bytes(t.data)) for t in request.inputs], dict(
        request.parameters
    )


def _both_ways(monkeypatch: pytest.MonkeyPatch, body: bytes, header_length: int | None) -> Any:
    monkeypatch.setattr(oip_json, "_LIFT_DOCUMENTS_FROM", 1 << 62)
    whole = _read(body, header_length)
    monkeypatch.setattr(oip_json, "_LIFT_DOCUMENTS_FROM", 0)
    monkeypatch.setattr(json_numbers, "MIN_LIFTED_BYTES", 4)
    monkeypatch.setattr(json_numbers, "PIECE_BYTES", 8)
    return whole, _read(body, header_length)


def _doc(data: str, datatype: str = "FP32", shape: int = 6, extra: str = "") -> bytes:
    tensor = f'"name":"x","datatype":"{datatype}","shape":[{shape}],"data":{data}'
    return ("{" + extra + '"inputs":[{' + tensor + "}]}").encode()


LIFTED_CASES = {
    "flat": _doc("[1.5, -2, 3e2, 4E-1, -0.0, 6]"),
    "newlines": _doc("[\n 1,\n 2 ,3,4,5,\n6\n]"),
    "decoy-in-a-string": _doc("[1,2,3,4,5,6]", extra='"id":"\\"data\\":[9,9,9,9,9,9]",'),
    "escaped-backslash": _doc("[1,2,3,4,5,6]", extra='"id":"a\\\\","p":"\\\\\\"data\\":[7]",'),
    "nested": _doc("[[1,2,3],[4,5,6]]"),
    "uint64-exact": _doc("[0,7,18446744073709551615,9223372036854775808,1,2]", "UINT64"),
    "uint64-past": _doc("[0,7,18446744073709551616,1,2,3]", "UINT64"),
    "int32-floats": _doc("[1,2,3,4,5,6.5]", "INT32"),
    "bool": _doc("[true,false,true,true,false,false]", "BOOL"),
    "bytes-numbers": _doc("[1,2,3,4,5,6]", "BYTES"),
    "too-few": _doc("[1,2,3,4,5]"),
    "too-many": _doc("[1,2,3,4,5,6,7,8,9,10,11,12,13]"),
    "trailing-comma": _doc("[1,2,3,4,5,6,]"),
    "empty-element": _doc("[1,2,,3,4,5,6]"),
    "space-then-comma": _doc("[1,2,3,4,5,6, ]"),
    "leading-zero": _doc("[01,2,3,4,5,6]"),
    "plus-sign": _doc("[+1,2,3,4,5,6]"),
    "nan": _doc("[NaN,2,3,4,5,6]"),
    "unclosed": _doc("[1,2,3,4,5,6").rstrip(b"}]"),
    "in-parameters": _doc("[1,2,3,4,5,6]", extra='"parameters":{"data":[1,2,3,4,5,6]},'),
    "in-an-unknown-field": _doc("[1,2,3,4,5,6]", extra='"more":{"data":[1,2,3,4,5,6]},'),
    "duplicate-key": b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],'
    b'"data":[1,2,3,4,5,6],"data":[7,8]}]}',
    "placeholder-lookalike": _doc('["\\u0000infergw-0-0"]', "BYTES", 1),
    "parameter-past-uint64": _doc(
        "[1,2,3,4,5,6]", extra='"parameters":{"b":18446744073709551616},'
    ),
}


LEFT_IN_THE_DOCUMENT = {"nested", "unclosed", "placeholder-lookalike"}  # nothing to lift


@pytest.mark.parametrize("case", LIFTED_CASES)
def test_lifted_reading_accepts_and_refuses_what_reading_whole_does(
    monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    body = LIFTED_CASES[case]
    whole, lifted = _both_ways(monkeypatch, body, None)
    assert lifted == whole
    lifts = json_numbers.lift(body, len(body)) is not None
    assert lifts == (case not in LEFT_IN_THE_DOCUMENT)  # the lifted path did run


def test_lifted_reading_with_a_binary_section(monkeypatch: pytest.MonkeyPatch) -> None:
    head = b'{"inputs":[{"name":"b","datatype":"UINT8","shape":[3],'
    head += b'"parameters":{"binary_data_size":3}},'
    head += b'{"name":"x","datatype":"FP32","shape":[6],"data":[1,2,3,4,5,6]}]}'
    whole, lifted = _both_ways(monkeypatch, head + b"\x01\x02\x03", len(head))
    assert lifted == whole and len(whole[0]) == 2
    assert json_numbers.lift(head + b"\x01\x02\x03", len(head)) is not None


def test_lift_takes_only_big_flat_string_free_data_arrays() -> None:
    body = bytearray(_doc("[" + ",".join(["1"] * 40000) + "]", shape=40000))
    body[:1] = b'{"id":"\\"data\\":[' + b"2," * 40000 + b'2]","n":{"data":[[1],[2]]},'
    lifted = json_numbers.lift(body, len(body))
    assert lifted is not None and len(lifted.arrays) == 1
    assert len(lifted.document) < 100 + len(body) // 2  # the decoy string stayed in
    (span,) = lifted.arrays.values()
    assert [v for piece in json_numbers.pieces(span) for v in piece] == [1] * 40000


def test_lifted_reading_matches_whole_on_mutated_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    """A seeded mutator (JSON's own characters inserted, deleted, replaced): whatever the
    result, 200 or 400, it is the same both ways (40,000 mutants agreed when written)."""
    rng = random.Random(9)
    alphabet = b'[]{},:"\\ 0123456789eE.+-tfnula\n'
    seeds = list(LIFTED_CASES.values())
    for _ in range(2000):
        body = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(body))
            op = rng.randrange(3)
            if op == 0:
                body[pos:pos] = bytes([rng.choice(alphabet)])
            elif op == 1:
                del body[pos]
            else:
                body[pos] = rng.choice(alphabet)
        whole, lifted = _both_ways(monkeypatch, bytes(body), None)
        assert lifted == whole, bytes(body)
