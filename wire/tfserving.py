"""Codec between TensorFlow Serving's messages (``tensorflow.serving.*``) and the core types.

Used by the TF Serving frontend and the ``tfserving`` backend. A ``TensorProto``
carries its data either as ``tensor_content`` (little-endian, row-major bytes: the
OIP raw layout already, so it passes through with no per-element work) or in a
typed repeated field. TF fills a tensor from the typed field the way
``tensorflow::Tensor::FromProto`` does: no values -> zeros, fewer values than
elements -> the last value repeated (``make_tensor_proto(1.0, shape=[2, 3])``
sends one value). More values than elements is rejected here (TF drops them).
Every size is checked before the expanded tensor is allocated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from infergw.proto.tfs import (
    get_model_metadata_pb2,
    meta_graph_pb2,
    predict_pb2,
    tensor_pb2,
    types_pb2,
)
from infergw.vocab.datatypes import (
    NUMPY_DTYPES,
    deserialize_bytes,
    element_count,
    element_size,
    serialize_bytes,
)
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

ENCODING = "tfs-predict"  # RawMessage.encoding of a serialized PredictRequest/Response
DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE_DEF = "signature_def"  # the only GetModelMetadata field TF Serving defines
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"

DT = types_pb2.DataType
# TF DataType <-> OIP datatype, for every type the core can hold.
_PAIRS: tuple[tuple[types_pb2.DataType, str], ...] = (
    (DT.DT_FLOAT, "FP32"),
    (DT.DT_DOUBLE, "FP64"),
    (DT.DT_HALF, "FP16"),
    (DT.DT_INT8, "INT8"),
    (DT.DT_INT16, "INT16"),
    (DT.DT_INT32, "INT32"),
    (DT.DT_INT64, "INT64"),
    (DT.DT_UINT8, "UINT8"),
    (DT.DT_UINT16, "UINT16"),
    (DT.DT_UINT32, "UINT32"),
    (DT.DT_UINT64, "UINT64"),
    (DT.DT_BOOL, "BOOL"),
    (DT.DT_STRING, "BYTES"),
)
TO_OIP: dict[int, str] = {int(tf): oip for tf, oip in _PAIRS}
FROM_OIP: dict[str, types_pb2.DataType] = {oip: tf for tf, oip in _PAIRS}

# Which typed field carries each OIP datatype, and the dtype the field's values have.
_TYPED_FIELD: dict[str, tuple[str, str]] = {
    "FP32": ("float_val", "<f4"),
    "FP64": ("double_val", "<f8"),
    "FP16": ("half_val", "<i4"),  # IEEE half bit patterns, one per int32
    "INT8": ("int_val", "<i4"),
    "INT16": ("int_val", "<i4"),
    "INT32": ("int_val", "<i4"),
    "UINT8": ("int_val", "<i4"),
    "UINT16": ("int_val", "<i4"),
    "INT64": ("int64_val", "<i8"),
    "UINT32": ("uint32_val", "<u4"),
    "UINT64": ("uint64_val", "<u8"),
    "BOOL": ("bool_val", "?"),
}


# -- tensors -----------------------------------------------------------------------------
def datatype_from_tf(dtype: int, what: str) -> str:
    datatype = TO_OIP.get(dtype)
    if datatype is None:
        name = DT.Name(dtype) if dtype in DT.values() else str(dtype)
        raise InvalidArgument(
            f"{what}: unsupported dtype {name}; supported: " + ", ".join(DT.Name(d) for d in TO_OIP)
        )
    return datatype


def datatype_to_tf(datatype: str, what: str = "tensor") -> types_pb2.DataType:
    dtype = FROM_OIP.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"{what}: datatype {datatype} has no TensorFlow equivalent")
    return dtype


def shape_from_tf(shape: Any, what: str) -> tuple[int, ...]:
    """A fully known shape (inputs must have one: the data size depends on it)."""
    if shape.unknown_rank:
        raise InvalidArgument(f"{what}: tensor_shape has unknown rank")
    dims = tuple(d.size for d in shape.dim)
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"{what}: tensor_shape {list(dims)} has an unknown dimension")
    return dims


def tensor_from_proto(name: str, proto: tensor_pb2.TensorProto, max_bytes: int) -> Tensor:
    """TensorProto -> core Tensor; ``max_bytes`` bounds the tensor a typed field expands to."""
    what = f"tensor {name!r}"
    datatype = datatype_from_tf(proto.dtype, what)
    shape = shape_from_tf(proto.tensor_shape, what)
    count = element_count(shape, what)
    content = proto.tensor_content
    if content:
        if datatype == "BYTES":
            raise InvalidArgument(f"{what}: DT_STRING data must be in string_val")
        expected = count * (element_size(datatype) or 0)
        if len(content) != expected:
            raise InvalidArgument(
                f"{what}: shape {list(shape)} with dtype {DT.Name(proto.dtype)} needs "
                f"{expected} bytes of tensor_content, got {len(content)}"
            )
        return Tensor(name, datatype, shape, content)
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, _strings(proto.string_val, count, what, max_bytes))
    field, field_dtype = _TYPED_FIELD[datatype]
    values = getattr(proto, field)
    nbytes = count * NUMPY_DTYPES[datatype].itemsize
    _check_fill(len(values), count, nbytes, what, field, max_bytes)
    # int_val -> narrower ints wraps like TF's static_cast; half_val keeps the low 16 bits.
    target = np.dtype("<u2") if datatype == "FP16" else NUMPY_DTYPES[datatype]
    given = np.asarray(values, dtype=field_dtype).astype(target, copy=False)  # message-sized
    if len(given) == count:
        return Tensor(name, datatype, shape, given.tobytes())
    filled = np.zeros(count, dtype=target)  # at most nbytes, checked above
    if len(given):
        filled[: len(given)] = given
        filled[len(given) :] = given[-1]
    return Tensor(name, datatype, shape, filled.tobytes())


def _strings(values: Sequence[bytes], count: int, what: str, max_bytes: int) -> bytes:
    n = len(values)
    if n == count:
        return serialize_bytes(values)
    last = values[-1] if values else b""
    nbytes = sum(4 + len(v) for v in values) + (count - n) * (4 + len(last))
    _check_fill(n, count, nbytes, what, "string_val", max_bytes)
    return serialize_bytes([*values, *([last] * (count - n))])


def _check_fill(n: int, count: int, nbytes: int, what: str, field: str, max_bytes: int) -> None:
    if n > count:
        raise InvalidArgument(f"{what}: {field} has {n} values for {count} elements")
    if nbytes > max_bytes:
        raise PayloadTooLarge(f"{what} ({count} elements filled from {field})", nbytes, max_bytes)


def tensor_to_proto(tensor: Tensor, proto: tensor_pb2.TensorProto) -> None:
    """Fill ``proto`` (a fresh map entry): tensor_content, or string_val for BYTES."""
    proto.dtype = datatype_to_tf(tensor.datatype, f"tensor {tensor.name!r}")
    dims = proto.tensor_shape.dim
    for size in tensor.shape:
        dims.add(size=size)
    if tensor.datatype == "BYTES":
        proto.string_val.extend(deserialize_bytes(tensor.data))
    else:
        proto.tensor_content = bytes(tensor.data)


# -- Predict -----------------------------------------------------------------------------
def version_from_spec(spec: Any) -> str:
    which = spec.WhichOneof("version_choice")
    if which == "version":
        return str(spec.version.value)
    return spec.version_label if which == "version_label" else ""


def set_spec(spec: Any, model: str, version: str, signature: str) -> None:
    """Numeric versions travel as ``version``, anything else as ``version_label``."""
    spec.name = model
    if version.isdigit():
        spec.version.value = int(version)
    elif version:
        spec.version_label = version
    spec.signature_name = signature


def request_from_proto(
    msg: predict_pb2.PredictRequest, max_bytes: int, payload: bytes | None = None
) -> InferRequest:
    """The core request; ``payload`` (the bytes ``msg`` was parsed from) enables forwarding.

    The caller checks ``model_spec.signature_name``.
    """
    inputs = tuple(tensor_from_proto(name, proto, max_bytes) for name, proto in msg.inputs.items())
    names = list(msg.output_filter)
    if len(set(names)) != len(names):
        raise InvalidArgument(f"output_filter names an output more than once: {names}")
    return InferRequest(
        model=msg.model_spec.name,
        version=version_from_spec(msg.model_spec),
        inputs=inputs,
        outputs=tuple(RequestedOutput(n) for n in names),
        raw=None if payload is None else RawMessage(ENCODING, payload),
    )


def request_to_proto(request: InferRequest, signature: str) -> predict_pb2.PredictRequest:
    msg = predict_pb2.PredictRequest()
    set_spec(msg.model_spec, request.model, request.version, signature)
    for tensor in request.inputs:
        tensor_to_proto(tensor, msg.inputs[tensor.name])
    msg.output_filter.extend(o.name for o in request.outputs)
    return msg


def response_from_proto(
    msg: predict_pb2.PredictResponse, request: InferRequest, max_bytes: int
) -> InferResponse:
    """Outputs in the order asked for (``output_filter``), else sorted by name."""
    names = [o.name for o in request.outputs] or sorted(msg.outputs)
    outputs = []
    for name in names:
        if name not in msg.outputs:
            raise InvalidArgument(f"response has no output {name!r}")
        outputs.append(tensor_from_proto(name, msg.outputs[name], max_bytes))
    version = version_from_spec(msg.model_spec) or request.version
    return InferResponse(
        model=request.model, version=version, id=request.id, outputs=tuple(outputs)
    )


def response_to_proto(
    response: InferResponse, requested: Sequence[RequestedOutput] = ()
) -> predict_pb2.PredictResponse:
    """Only the ``requested`` outputs when there are any (a backend may return more)."""
    msg = predict_pb2.PredictResponse()
    set_spec(msg.model_spec, response.model, response.version, DEFAULT_SIGNATURE)
    wanted = {o.name for o in requested}
    for tensor in response.outputs:
        if not wanted or tensor.name in wanted:
            tensor_to_proto(tensor, msg.outputs[tensor.name])
    return msg


# -- GetModelMetadata --------------------------------------------------------------------
def _tensor_info(spec: TensorSpec, info: meta_graph_pb2.TensorInfo) -> None:
    info.name = spec.name
    info.dtype = datatype_to_tf(spec.datatype, f"tensor {spec.name!r}")
    for size in spec.shape:
        info.tensor_shape.dim.add(size=size)  # -1 stays -1: unknown in TF too


def metadata_to_proto(
    meta: ModelMetadata, version: str
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """One ``serving_default`` predict signature built from the core metadata."""
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    sig = sig_map.signature_def[DEFAULT_SIGNATURE]
    sig.method_name = PREDICT_METHOD
    for spec in meta.inputs:
        _tensor_info(spec, sig.inputs[spec.name])
    for spec in meta.outputs:
        _tensor_info(spec, sig.outputs[spec.name])
    msg = get_model_metadata_pb2.GetModelMetadataResponse()
    numeric = sorted((v for v in meta.versions if v.isdigit()), key=int)
    set_spec(msg.model_spec, meta.name, version or (numeric[-1] if numeric else ""), "")
    packed = msg.metadata[SIGNATURE_DEF]
    packed.type_url = SIGNATURE_DEF_MAP_URL
    packed.value = sig_map.SerializeToString()
    return msg


def metadata_from_proto(
    msg: get_model_metadata_pb2.GetModelMetadataResponse, model: str, signature: str
) -> ModelMetadata:
    """The named signature as core metadata; tensors are named by their signature keys."""
    packed = msg.metadata.get(SIGNATURE_DEF)
    if packed is None or not packed.type_url.endswith("/tensorflow.serving.SignatureDefMap"):
        raise InvalidArgument(f"model {model!r}: metadata has no signature_def map")
    sig_map = get_model_metadata_pb2.SignatureDefMap.FromString(packed.value)
    if signature not in sig_map.signature_def:
        known = sorted(sig_map.signature_def)
        raise InvalidArgument(f"model {model!r} has no signature {signature!r}; it has {known}")
    sig = sig_map.signature_def[signature]

    def specs(infos: Any) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(
                key,
                TO_OIP.get(info.dtype, DT.Name(info.dtype) if info.dtype in DT.values() else ""),
                tuple(d.size for d in info.tensor_shape.dim),
            )
            for key, info in sorted(infos.items())
        )

    version = version_from_spec(msg.model_spec)
    return ModelMetadata(
        name=msg.model_spec.name or model,
        versions=(version,) if version else (),
        platform="tensorflow_serving",
        inputs=specs(sig.inputs),
        outputs=specs(sig.outputs),
    )
