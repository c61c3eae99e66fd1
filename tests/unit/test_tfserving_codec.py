"""The TF Serving codec: TensorProto <-> core Tensor for every dtype, both data encodings,
TF's fill-from-one-value semantics, and every unsupported or inconsistent input."""

from __future__ import annotations

import numpy as np
import pytest

from infergw.proto.tfs import predict_pb2, tensor_pb2, types_pb2
from infergw.vocab.datatypes import tensor_from_numpy, tensor_to_numpy
from infergw.vocab.errors import InvalidArgument, PayloadTooLarge
from infergw.vocab.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    RawMessage,
    RequestedOutput,
    Tensor,
    TensorSpec,
)
from infergw.wire import tfserving as codec

DT = types_pb2.DataType
LIMIT = 1 << 20

ARRAYS = {
    "FP32": np.array([[1.5, -2.0, 3.25], [0.0, 1e-30, 7.0]], np.float32),
    "FP64": np.array([np.pi, -1e300], np.float64),
    "FP16": np.array([[1.5, -2.25], [65504.0, 0.0]], np.float16),
    "INT8": np.array([-128, 0, 127], np.int8),
    "INT16": np.array([-32768, 5, 32767], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], np.int32),
    "INT64": np.array([-(2**62), 0, 2**62], np.int64),
    "UINT8": np.array([0, 200, 255], np.uint8),
    "UINT16": np.array([0, 40000, 65535], np.uint16),
    "UINT32": np.array([0, 2**32 - 1], np.uint32),
    "UINT64": np.array([0, 2**64 - 1], np.uint64),
    "BOOL": np.array([[True, False], [False, True]]),
    "BYTES": np.array([b"hello", "h\u00e9llo".encode(), b"", b"\xff\x00"], np.object_),
}
TYPED_FIELD = {
    "FP32": "float_val",
    "FP64": "double_val",
    "INT8": "int_val",
    "INT16": "int_val",
    "INT32": "int_val",
    "UINT8": "int_val",
    "UINT16": "int_val",
    "INT64": "int64_val",
    "UINT32": "uint32_val",
    "UINT64": "uint64_val",
    "BOOL": "bool_val",
    "BYTES": "string_val",
}


def proto_of(datatype: str, shape: list[int], **fields: object) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=codec.FROM_OIP.get(datatype, 0))
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    for name, value in fields.items():
        if isinstance(value, bytes):
            setattr(proto, name, value)
        else:
            getattr(proto, name).extend(value)
    return proto


def decode(proto: tensor_pb2.TensorProto, max_bytes: int = LIMIT) -> np.ndarray:
    return tensor_to_numpy(codec.tensor_from_proto("x", proto, max_bytes))


# -- round trips -------------------------------------------------------------------------
@pytest.mark.parametrize("datatype", sorted(ARRAYS))
def test_round_trip_every_dtype(datatype: str) -> None:
    tensor = tensor_from_numpy("x", ARRAYS[datatype])
    assert tensor.datatype == datatype
    proto = tensor_pb2.TensorProto()
    codec.tensor_to_proto(tensor, proto)
    assert proto.dtype == codec.FROM_OIP[datatype]
    assert [d.size for d in proto.tensor_shape.dim] == list(ARRAYS[datatype].shape)
    # numeric data goes as tensor_content, strings as string_val (as TF does)
    assert bool(proto.tensor_content) == (datatype != "BYTES")
    back = codec.tensor_from_proto(
        "x", tensor_pb2.TensorProto.FromString(proto.SerializeToString()), LIMIT
    )
    assert back == Tensor("x", datatype, tensor.shape, tensor.data)


def test_tensor_content_passes_through_without_copying_elements() -> None:
    data = np.arange(6, dtype=np.float32).tobytes()
    back = codec.tensor_from_proto("x", proto_of("FP32", [2, 3], tensor_content=data), LIMIT)
    assert back.data == data and back.shape == (2, 3)


@pytest.mark.parametrize("datatype", sorted(TYPED_FIELD))
def test_typed_fields_every_dtype(datatype: str) -> None:
    array = ARRAYS[datatype]
    values = array.reshape(-1).tolist()
    proto = proto_of(datatype, list(array.shape), **{TYPED_FIELD[datatype]: values})
    out = decode(proto)
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_half_val_carries_fp16_bit_patterns() -> None:
    array = ARRAYS["FP16"]
    bits = array.view(np.uint16).reshape(-1).astype(np.int32).tolist()
    np.testing.assert_array_equal(decode(proto_of("FP16", [2, 2], half_val=bits)), array)


def test_scalar_shape() -> None:
    out = decode(proto_of("INT64", [], int64_val=[42]))
    assert out.shape == () and out == 42


# -- TF's fill semantics -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("datatype", "field", "value"),
    [("FP32", "float_val", 1.5), ("INT32", "int_val", -7), ("BOOL", "bool_val", True)],
)
def test_one_value_fills_the_shape(datatype: str, field: str, value: object) -> None:
    out = decode(proto_of(datatype, [2, 3], **{field: [value]}))
    np.testing.assert_array_equal(out, np.full((2, 3), value))


def test_one_string_fills_the_shape() -> None:
    out = decode(proto_of("BYTES", [3], string_val=[b"ab"]))
    assert out.tolist() == [b"ab", b"ab", b"ab"]


def test_fewer_values_repeat_the_last_and_none_mean_zeros() -> None:
    np.testing.assert_array_equal(
        decode(proto_of("FP64", [5], double_val=[1.0, 2.0])), [1.0, 2.0, 2.0, 2.0, 2.0]
    )
    np.testing.assert_array_equal(decode(proto_of("INT8", [2, 2])), np.zeros((2, 2), np.int8))
    assert decode(proto_of("BYTES", [2])).tolist() == [b"", b""]


def test_filling_is_bounded_before_allocation() -> None:
    huge = proto_of("FP32", [1 << 20, 1 << 20], float_val=[1.0])  # 4 TiB if filled
    with pytest.raises(PayloadTooLarge, match="limit of 1048576 bytes"):
        decode(huge)
    with pytest.raises(PayloadTooLarge):
        decode(proto_of("BYTES", [1 << 30], string_val=[b"x" * 100]))


# -- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype",
    [DT.DT_INVALID, DT.DT_RESOURCE, DT.DT_VARIANT, DT.DT_COMPLEX64, DT.DT_BFLOAT16, DT.DT_QINT8],
)
def test_unsupported_dtypes_are_invalid_argument(dtype: int) -> None:
    proto = tensor_pb2.TensorProto(dtype=dtype)  # type: ignore[arg-type]
    proto.tensor_shape.dim.add(size=1)
    with pytest.raises(InvalidArgument, match=f"unsupported dtype {DT.Name(dtype)}"):
        decode(proto)


def test_reference_dtype_is_invalid_argument() -> None:
    proto = tensor_pb2.TensorProto(dtype=101)  # type: ignore[arg-type]  # DT_FLOAT_REF
    with pytest.raises(InvalidArgument, match="unsupported dtype 101"):
        decode(proto)


@pytest.mark.parametrize(
    ("proto", "message"),
    [
        (proto_of("FP32", [2, 2], tensor_content=b"\0" * 12), "needs 16 bytes of tensor_content"),
        (proto_of("FP32", [2, -1], float_val=[1.0]), "unknown dimension"),
        (
            tensor_pb2.TensorProto(dtype=DT.DT_FLOAT, tensor_shape={"unknown_rank": True}),
            "unknown rank",
        ),
        (proto_of("BYTES", [1], tensor_content=b"\0\0\0\0"), "must be in string_val"),
        (proto_of("INT32", [2], int_val=[1, 2, 3]), "int_val has 3 values for 2 elements"),
        (proto_of("FP32", [1 << 31, 1 << 31], tensor_content=b"\0"), "too large"),
    ],
)
def test_inconsistent_tensors_are_invalid_argument(
    proto: tensor_pb2.TensorProto, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode(proto)


def test_core_datatype_without_tf_equivalent() -> None:
    proto = tensor_pb2.TensorProto()
    with pytest.raises(InvalidArgument, match="no TensorFlow equivalent"):
        codec.tensor_to_proto(Tensor("x", "BF16", (1,), b"\0\0"), proto)


# -- Predict and GetModelMetadata --------------------------------------------------------
def predict_request() -> predict_pb2.PredictRequest:
    msg = predict_pb2.PredictRequest()
    msg.model_spec.name = "identity"
    msg.model_spec.version.value = 3
    msg.inputs["input"].CopyFrom(proto_of("FP32", [1, 2], float_val=[1.0, 2.0]))
    msg.output_filter.append("output")
    return msg


def test_predict_request_to_core_and_back() -> None:
    msg = predict_request()
    payload = msg.SerializeToString()
    request = codec.request_from_proto(msg, LIMIT, payload)
    assert request.model == "identity" and request.version == "3"
    assert request.outputs == (RequestedOutput("output"),)
    assert request.raw == RawMessage(codec.ENCODING, payload)
    np.testing.assert_array_equal(tensor_to_numpy(request.inputs[0]), [[1.0, 2.0]])
    again = codec.request_to_proto(request, "serving_default")
    assert again.model_spec.version.value == 3
    assert again.model_spec.signature_name == "serving_default"
    assert list(again.output_filter) == ["output"]
    assert codec.request_from_proto(again, LIMIT) == request


def test_version_labels_and_duplicate_filters() -> None:
    msg = predict_request()
    msg.model_spec.version_label = "stable"
    assert codec.request_from_proto(msg, LIMIT).version == "stable"
    spec = codec.request_to_proto(codec.request_from_proto(msg, LIMIT), "s").model_spec
    assert spec.WhichOneof("version_choice") == "version_label"
    msg.output_filter.append("output")
    with pytest.raises(InvalidArgument, match="more than once"):
        codec.request_from_proto(msg, LIMIT)


def test_predict_response_filters_and_orders_outputs() -> None:
    a = tensor_from_numpy("a", np.ones((1, 2), np.float32))
    b = tensor_from_numpy("b", np.array([b"x"], np.object_))
    response = InferResponse(model="m", version="1", outputs=(b, a))
    full = codec.response_to_proto(response)
    assert set(full.outputs) == {"a", "b"} and full.model_spec.version.value == 1
    only_a = codec.response_to_proto(response, (RequestedOutput("a"),))
    assert set(only_a.outputs) == {"a"}
    request = InferRequest(model="m", inputs=(), id="r1")
    back = codec.response_from_proto(full, request, LIMIT)
    assert [t.name for t in back.outputs] == ["a", "b"] and back.id == "r1"
    assert back.outputs == (a, b)
    wanted = InferRequest(model="m", inputs=(), outputs=(RequestedOutput("c"),))
    with pytest.raises(InvalidArgument, match="no output 'c'"):
        codec.response_from_proto(full, wanted, LIMIT)


def test_metadata_round_trip_as_signature_def() -> None:
    meta = ModelMetadata(
        name="minilm",
        versions=("1", "10", "2"),
        platform="python",
        inputs=(TensorSpec("text", "BYTES", (-1,)),),
        outputs=(TensorSpec("embedding", "FP32", (-1, 384)),),
    )
    msg = codec.metadata_to_proto(meta, "")
    assert msg.model_spec.version.value == 10  # the latest, as TF Serving answers
    assert msg.metadata["signature_def"].type_url.endswith("tensorflow.serving.SignatureDefMap")
    back = codec.metadata_from_proto(msg, "minilm", "serving_default")
    assert back.inputs == meta.inputs and back.outputs == meta.outputs
    assert back.versions == ("10",)
    with pytest.raises(InvalidArgument, match="no signature 'predict'"):
        codec.metadata_from_proto(msg, "minilm", "predict")
    del msg.metadata["signature_def"]
    with pytest.raises(InvalidArgument, match="no signature_def map"):
        codec.metadata_from_proto(msg, "minilm", "serving_default")


# -- the tfserving backend's config and request encoding (no sockets) --------------------
def test_backend_config() -> None:
    from infergw.backends.tfserving import TfServingBackend

    backend = TfServingBackend.from_config("tfs", {"url": "h:8500", "signature_name": "predict"})
    assert (backend.url, backend.signature_name) == ("h:8500", "predict")
    assert TfServingBackend.from_config("tfs", {"url": "h:1"}).signature_name == "serving_default"
    for options, message in [({}, "'url'"), ({"url": "h:1", "port": 1}, "unknown options")]:
        with pytest.raises(InvalidArgument, match=message):
            TfServingBackend.from_config("tfs", options)


def test_backend_forwards_the_clients_bytes_only_for_the_same_signature() -> None:
    from infergw.backends.tfserving import TfServingBackend

    msg = predict_request()
    payload = msg.SerializeToString()
    request = codec.request_from_proto(msg, LIMIT, payload)
    assert TfServingBackend("tfs", "h:1")._encode(request) is payload
    other = predict_pb2.PredictRequest.FromString(
        TfServingBackend("tfs", "h:1", "predict")._encode(request)
    )
    assert other.model_spec.signature_name == "predict"
    assert codec.request_from_proto(other, LIMIT) == request
