"""TF Serving's REST JSON codec: the documented request and response examples, every
JSON type TF Serving maps, exact 64-bit integers, NaN/Infinity, and each bad body a
clear InvalidArgument worded as TF Serving words it."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import pytest

from infergw.gateway.core.config import RouteConfig
from infergw.gateway.core.router import Router
from infergw.gateway.frontends.tfserving_rest import SignatureCache
from infergw.vocab.datatypes import tensor_from_numpy, tensor_to_numpy
from infergw.vocab.errors import BackendError, InvalidArgument, ModelNotFound
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec
from infergw.wire import tfserving_json as codec
from tests.fakes import EchoBackend

ROW, COLUMNAR = codec.Format.ROW, codec.Format.COLUMNAR
# The multi-input example of TF Serving's REST API page, in both forms.
TAG_SIGNAL_SENSOR = [
    TensorSpec("tag", "BYTES", (-1,)),
    TensorSpec("signal", "INT32", (-1, 5)),
    TensorSpec("sensor", "FP32", (-1, 2, 2)),
]
ROW_EXAMPLE = {
    "instances": [
        {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
        {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]},
    ]
}
COLUMNAR_EXAMPLE = {
    "inputs": {
        "tag": ["foo", "bar"],
        "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
        "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]],
    }
}


def spec(datatype: str, name: str = "x") -> list[TensorSpec]:
    return [TensorSpec(name, datatype, (-1,))]


def decode(body: dict[str, Any] | bytes, specs: list[TensorSpec]) -> InferRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return codec.predict_request("m", "", codec.parse_predict_body(raw), specs)


def arrays(request: InferRequest) -> dict[str, np.ndarray]:
    return {t.name: tensor_to_numpy(t) for t in request.inputs}


# -- decoding: what each body becomes ---------------------------------------------------

DECODED = [
    # (body, signature inputs, the arrays expected)
    ({"instances": [1.0, 2.0, 5.0]}, spec("FP32"), {"x": np.array([1, 2, 5], np.float32)}),
    (
        {"instances": ["foo", "bar", "baz"]},
        spec("BYTES"),
        {"x": np.array([b"foo", b"bar", b"baz"], np.object_)},
    ),
    (
        {"instances": [[[1, 2]], [[3, 4]]]},
        spec("INT32"),
        {"x": np.array([[[1, 2]], [[3, 4]]], np.int32)},
    ),
    ({"inputs": 3.0}, spec("FP64"), {"x": np.array(3.0)}),
    ({"inputs": [[1, 2.5]]}, spec("FP32"), {"x": np.array([[1, 2.5]], np.float32)}),
    ({"inputs": {"x": [True, False]}}, spec("BOOL"), {"x": np.array([True, False])}),
    ({"instances": [{"x": 1}, {"x": 2}]}, spec("INT8"), {"x": np.array([1, 2], np.int8)}),
    (
        {"instances": [{"b64": "aW1hZ2UgYnl0ZXM="}, {"b64": "AP8"}]},  # unpadded, as absl takes
        spec("BYTES"),
        {"x": np.array([b"image bytes", b"\x00\xff"], np.object_)},
    ),
    ({"inputs": {"b64": "YQ=="}}, spec("BYTES"), {"x": np.array(b"a", np.object_)}),
    (
        {"instances": [0, 7, 2**63, 2**64 - 1]},
        spec("UINT64"),
        {"x": np.array([0, 7, 2**63, 2**64 - 1], np.uint64)},
    ),
    (
        {"instances": [-(2**63), 2**63 - 1]},
        spec("INT64"),
        {"x": np.array([-(2**63), 2**63 - 1], np.int64)},
    ),
    ({"instances": [-128, 255]}, spec("INT16"), {"x": np.array([-128, 255], np.int16)}),
    ({"instances": [[], []]}, spec("FP32"), {"x": np.zeros((2, 0), np.float32)}),
    ({"inputs": [1e308, -1e308]}, spec("FP32"), {"x": np.array([np.inf, -np.inf], np.float32)}),
    (
        {"signature_name": "serving_default", "inputs": ["h\u00e9llo"]},
        spec("BYTES"),
        {"x": np.array(["h\u00e9llo".encode()], np.object_)},
    ),
]


@pytest.mark.parametrize(("body", "specs", "expected"), DECODED)
def test_decode(body: dict[str, Any], specs: list[TensorSpec], expected: dict) -> None:
    found = arrays(decode(body, specs))
    assert found.keys() == expected.keys()
    for name, array in expected.items():
        assert found[name].dtype == array.dtype, name
        assert found[name].shape == array.shape, name
        np.testing.assert_array_equal(found[name], array)


def test_row_and_columnar_forms_of_the_documented_example_decode_alike() -> None:
    row, columnar = (
        decode(ROW_EXAMPLE, TAG_SIGNAL_SENSOR),
        decode(COLUMNAR_EXAMPLE, TAG_SIGNAL_SENSOR),
    )
    assert [t.name for t in row.inputs] == ["sensor", "signal", "tag"]
    assert arrays(row).keys() == arrays(columnar).keys()
    for name, array in arrays(row).items():
        np.testing.assert_array_equal(array, arrays(columnar)[name])
    assert arrays(row)["sensor"].shape == (2, 2, 2)
    np.testing.assert_array_equal(arrays(row)["signal"][1], [3, 4, 1, 2, 5])
    assert list(arrays(row)["tag"]) == [b"foo", b"bar"]


def test_nan_and_infinity_tokens_are_read() -> None:
    body = b'{"instances": [NaN, Infinity, -Infinity, 1.5]}'
    values = arrays(decode(body, spec("FP32")))["x"]
    assert math.isnan(values[0]) and values[1] == np.inf and values[2] == -np.inf
    assert values[3] == 1.5


def test_body_format_and_signature() -> None:
    parsed = codec.parse_predict_body(b'{"signature_name": "s", "inputs": {"a": 1}}')
    assert (parsed.signature, parsed.format, parsed.tensors) == ("s", COLUMNAR, {"a": 1})
    assert codec.parse_predict_body(b'{"instances": [1]}').format is ROW


# -- decoding: every bad body is a 400 in TF Serving's words ------------------------------

BAD = [
    # (body, signature inputs, a part of the message)
    (b"", spec("FP32"), "JSON Parse error: The document is empty"),
    (b'{"instances": [1,', spec("FP32"), "JSON Parse error:"),
    (b"[1]", spec("FP32"), "Is not object"),
    (b'{"instances": 1}', spec("FP32"), "Expecting 'instances' to be an list/array"),
    (b'{"instances": []}', spec("FP32"), "No values in 'instances' array"),
    (b'{"instances": [1], "inputs": [1]}', spec("FP32"), "expecting only one of 'inputs'"),
    (b'{"examples": []}', spec("FP32"), "Missing 'inputs' or 'instances' key"),
    (b'{"signature_name": 5, "inputs": 1}', spec("FP32"), "'signature_name' key must be a string"),
    (b'{"inputs": [[1, 2], [3]]}', spec("FP32"), "Encountered list at unexpected size: 1"),
    (b'{"inputs": [[1], [[2]]]}', spec("FP32"), "Encountered list at unexpected level"),
    (b'{"inputs": [[1, 2], 3]}', spec("FP32"), "found at incorrect level"),
    (
        b'{"inputs": ["1.5"]}',
        spec("FP32"),
        'JSON Value: "1.5" Type: String is not of expected type: float',
    ),
    (b'{"inputs": [true]}', spec("FP64"), "Type: True is not of expected type: double"),
    (
        b'{"inputs": [1.5]}',
        spec("INT32"),
        "JSON Value: 1.5 Type: Number is not of expected type: int32",
    ),
    (b'{"inputs": [1, true]}', spec("INT64"), "Type: True is not of expected type: int64"),
    (b'{"inputs": [1]}', spec("BOOL"), "is not of expected type: bool"),
    (
        b'{"inputs": [2147483648]}',
        spec("INT32"),
        "JSON Value: 2147483648 Type: Number is not of expected type: int32",
    ),
    (b'{"inputs": [256]}', spec("UINT8"), "is not of expected type: uint8"),
    (
        b'{"inputs": [0, -1]}',
        spec("UINT64"),
        "JSON Value: -1 Type: Number is not of expected type: uint64",
    ),
    (b'{"inputs": [18446744073709551616]}', spec("UINT64"), "is not of expected type: uint64"),
    (b'{"inputs": [-9223372036854775809]}', spec("INT64"), "is not of expected type: int64"),
    (b'{"inputs": [null]}', spec("FP32"), "Type: Null is not of expected type: float"),
    (b'{"inputs": [1]}', spec("BYTES"), "is not of expected type: string"),
    (b'{"inputs": [{"b64": "YQ=="}]}', spec("FP32"), "Type: Object is not of expected type: float"),
    (b'{"inputs": [{"b64": "!!!"}]}', spec("BYTES"), "Unable to base64 decode"),
    (
        b'{"inputs": [{"b64": "YQ==", "x": 1}]}',
        spec("BYTES"),
        "not formatted correctly for base64 data",
    ),
    (b'{"inputs": [1]}', spec("FP8"), "datatype FP8, which JSON cannot carry"),
    (b'{"inputs": 1}', [], "Failed to get input map for signature: DEFAULT"),
    (
        b'{"inputs": ' + b"[" * 65 + b"1" + b"]" * 65 + b"}",
        spec("FP32"),
        "lists nested deeper than 64 levels",
    ),
    (
        b'{"instances": [1, 2]}',
        spec("FP32", "a") + spec("FP32", "b"),
        "instances is a plain list, but expecting list of objects",
    ),
    (
        b'{"inputs": [1, 2]}',
        spec("FP32", "a") + spec("FP32", "b"),
        "inputs is a plain value/list, but expecting an object",
    ),
    (
        b'{"inputs": {"a": [1]}}',
        spec("FP32", "a") + spec("FP32", "b"),
        "Missing named input: b in 'inputs' object.",
    ),
    (
        b'{"instances": [{"a": 1, "b": 2}, {"a": 1}]}',
        spec("FP32", "a") + spec("FP32", "b"),
        "Failed to process element: 1 of 'instances' list. "
        'JSON object: {"a":1} keys must be equal to: a,b',
    ),
    (b'{"instances": [{"x": 1}, [2]]}', spec("FP32"), "Expecting object but got list at item 1"),
    (
        b'{"instances": [[1], {"x": [2]}]}',
        spec("FP32"),
        "Expecting value/list but got object at item 1",
    ),
    (b'{"instances": [{"x": [1]}, {"x": [2, 3]}]}', spec("FP32"), "unexpected size: 2"),
]


@pytest.mark.parametrize(("body", "specs", "message"), BAD)
def test_bad_bodies(body: bytes, specs: list[TensorSpec], message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode(body, specs)
    assert message in info.value.message


def test_an_offending_value_is_quoted_briefly() -> None:
    body = json.dumps({"inputs": [["x" * 500]]}).encode()
    with pytest.raises(InvalidArgument) as info:
        decode(body, spec("FP32"))
    assert len(info.value.message) < 200


@pytest.mark.parametrize(
    ("text", "version"), [("3", "3"), ("007", "7"), (str(2**63 - 1), str(2**63 - 1))]
)
def test_parse_version(text: str, version: str) -> None:
    assert codec.parse_version(text) == version


@pytest.mark.parametrize("text", [str(2**63), "x", ""])
def test_parse_version_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument, match="Failed to convert version"):
        codec.parse_version(text)


# -- encoding: predictions (row) and outputs (columnar) ---------------------------------


def out(name: str, array: np.ndarray) -> Tensor:
    return tensor_from_numpy(name, array)


def encode(fmt: codec.Format, *outputs: Tensor) -> Any:
    return json.loads(codec.predict_response_json(InferResponse("m", tuple(outputs)), fmt))


HALF_PLUS_THREE = out("y", np.array([3.5, 4.0, 5.5], np.float32))
TWO_OUTPUTS = (
    out("scores", np.array([[0.5, 0.25], [1.0, 0.0]], np.float32)),
    out("labels", np.array([b"cat", b"dog"], np.object_)),
)

ENCODED = [
    # (form, outputs, the JSON document expected)
    (ROW, (HALF_PLUS_THREE,), {"predictions": [3.5, 4.0, 5.5]}),
    (COLUMNAR, (HALF_PLUS_THREE,), {"outputs": [3.5, 4.0, 5.5]}),
    (
        ROW,
        TWO_OUTPUTS,
        {
            "predictions": [
                {"labels": "cat", "scores": [0.5, 0.25]},
                {"labels": "dog", "scores": [1.0, 0.0]},
            ]
        },
    ),
    (
        COLUMNAR,
        TWO_OUTPUTS,
        {"outputs": {"labels": ["cat", "dog"], "scores": [[0.5, 0.25], [1.0, 0.0]]}},
    ),
    (
        COLUMNAR,
        (out("image_bytes", np.array([b"\x00\xff", b"a"], np.object_)),),
        {"outputs": [{"b64": "AP8="}, {"b64": "YQ=="}]},
    ),
    (
        COLUMNAR,
        (out("text", np.array([[b"ok", b"\xff"]], np.object_)),),  # not UTF-8: base64
        {"outputs": [["ok", {"b64": "/w=="}]]},
    ),
    (
        ROW,
        (
            out("u", np.array([0, 2**64 - 1], np.uint64)),
            out("i", np.array([-(2**63), 1], np.int64)),
        ),
        {"predictions": [{"i": -(2**63), "u": 0}, {"i": 1, "u": 2**64 - 1}]},
    ),
    (COLUMNAR, (out("s", np.array(2.5, np.float64)),), {"outputs": 2.5}),
    (COLUMNAR, (out("b", np.array([[True], [False]])),), {"outputs": [[True], [False]]}),
    (COLUMNAR, (out("e", np.zeros((2, 0), np.float32)),), {"outputs": [[], []]}),
    (COLUMNAR, (out("e", np.zeros((2, 0), np.object_)),), {"outputs": [[], []]}),
    (ROW, (out("h", np.array([1.5, -2.0], np.float16)),), {"predictions": [1.5, -2.0]}),
]


@pytest.mark.parametrize(("fmt", "outputs", "expected"), ENCODED)
def test_encode(fmt: codec.Format, outputs: tuple[Tensor, ...], expected: Any) -> None:
    assert encode(fmt, *outputs) == expected


def test_float32_is_written_shortest_and_floats_keep_a_decimal_point() -> None:
    payload = codec.predict_response_json(
        InferResponse("m", (out("y", np.array([0.1, 3.0, 1435774380.0], np.float32)),)), ROW
    )
    assert payload == b'{"predictions":[0.1,3.0,1435774300.0]}'


@pytest.mark.parametrize("fmt", [ROW, COLUMNAR])
def test_non_finite_floats_are_tf_servings_tokens(fmt: codec.Format) -> None:
    values = np.array([[np.nan, 1.0], [np.inf, -np.inf]], np.float32)
    outputs = (out("y", values), out("z", np.array([1, 2], np.int32)))
    payload = codec.predict_response_json(InferResponse("m", outputs), fmt)
    assert b"null" not in payload
    assert b"NaN" in payload and b"-Infinity" in payload
    doc = json.loads(payload)  # the stdlib reads the tokens, as TF Serving's docs say
    y = [row["y"] for row in doc["predictions"]] if fmt is ROW else doc["outputs"]["y"]
    assert math.isnan(y[0][0]) and y[0][1] == 1.0 and y[1] == [math.inf, -math.inf]


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ((out("s", np.array(1.0, np.float32)),), "Tensor name: s has no shape information"),
        (
            (out("a", np.zeros((2, 1), np.float32)), out("b", np.zeros((3,), np.float32))),
            "Tensor name: b has inconsistent batch size: 3 expecting: 2",
        ),
    ],
)
def test_row_form_needs_one_batch_size(outputs: tuple[Tensor, ...], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        codec.predict_response_json(InferResponse("m", outputs), ROW)
    codec.predict_response_json(InferResponse("m", outputs), COLUMNAR)  # columnar takes it


def test_no_outputs_is_the_backends_failure() -> None:
    with pytest.raises(BackendError):
        codec.predict_response_json(InferResponse("m", ()), ROW)


def test_request_round_trips_through_the_response_encoder() -> None:
    """What a row request decodes to, encoded back in row form, is the request again."""
    request = decode(ROW_EXAMPLE, TAG_SIGNAL_SENSOR)
    assert encode(ROW, *request.inputs) == {"predictions": ROW_EXAMPLE["instances"]}
    columnar = decode(COLUMNAR_EXAMPLE, TAG_SIGNAL_SENSOR)
    assert encode(COLUMNAR, *columnar.inputs) == {"outputs": COLUMNAR_EXAMPLE["inputs"]}


# -- metadata, status, errors -------------------------------------------------------------


def test_metadata_json_is_tf_servings_shape() -> None:
    meta = ModelMetadata(
        name="half",
        versions=("1", "3"),
        platform="python",
        inputs=(TensorSpec("x", "FP32", (-1, 1)),),
        outputs=(TensorSpec("y_bytes", "BYTES", (-1,)),),
    )
    doc = json.loads(codec.metadata_json(meta, ""))
    assert doc["model_spec"] == {"name": "half", "signature_name": "", "version": "3"}
    sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["x"] == {
        "name": "x",
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
            "unknown_rank": False,
        },
    }
    assert sig["outputs"]["y_bytes"]["dtype"] == "DT_STRING"
    assert json.loads(codec.metadata_json(meta, "1"))["model_spec"]["version"] == "1"


def test_status_json_is_tf_servings_shape() -> None:
    assert json.loads(codec.status_json(["123", ""])) == {
        "model_version_status": [
            {
                "version": v,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in ("123", "0")
        ]
    }


def test_error_json() -> None:
    assert json.loads(codec.error_json('bad "x"')) == {"error": 'bad "x"'}


def test_b64_output_round_trips() -> None:
    raw = bytes(range(256))
    doc = encode(COLUMNAR, out("blob_bytes", np.array([raw], np.object_)))
    assert base64.b64decode(doc["outputs"][0]["b64"]) == raw


# -- the frontend's signature cache (a JSON body needs the model's input dtypes) ---------


class CountingEcho(EchoBackend):
    def __init__(self) -> None:
        super().__init__()
        self.metadata_calls = 0

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        self.metadata_calls += 1
        return await super().model_metadata(model, version)


async def test_signature_cache_asks_once_per_ttl_and_model() -> None:
    backend, now = CountingEcho(), [100.0]
    router = Router({"echo": backend}, [RouteConfig(model="*", backend="echo")])
    cache = SignatureCache(router, ttl_s=2.0, clock=lambda: now[0])
    first = await cache.inputs("identity", "", None)
    assert [s.name for s in first] == ["input"]
    for _ in range(5):
        assert await cache.inputs("identity", "", None) == first
    assert backend.metadata_calls == 1
    await cache.inputs("identity", "1", None)  # another version: its own entry
    assert backend.metadata_calls == 2
    now[0] += 2.5  # expired: asked again
    await cache.inputs("identity", "", None)
    assert backend.metadata_calls == 3
    with pytest.raises(ModelNotFound):  # failures are not kept
        await cache.inputs("nope", "", None)
    with pytest.raises(ModelNotFound):
        await cache.inputs("nope", "", None)
    assert backend.metadata_calls == 5
