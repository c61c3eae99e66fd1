"""Codec between the OIP gRPC messages (``inference.*``) and the core types.

Used by the gRPC frontend, the OIP gRPC backends and the SDK, so it lives once here.
Tensor data moves as raw bytes (``raw_input_contents`` / ``raw_output_contents``);
typed ``contents`` are accepted on input and converted to the raw layout. Model
metadata and statistics have one converter pair each (``metadata_to_proto`` /
``metadata_from_proto``, ``statistics_to_proto`` / ``statistics_from_proto``).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.datatypes import (
    NUMPY_DTYPES,
    check_datatype,
    element_count,
    serialize_bytes,
)
from infergw.vocab.errors import InvalidArgument
from infergw.vocab.types import (
    EMPTY_PARAMS,
    Duration,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelStatistics,
    Parameters,
    RawMessage,
    RequestedOutput,
    Tensor,
    TensorSpec,
)

ENCODING = "oip-grpc"  # RawMessage.encoding of a serialized ModelInferRequest/Response

# Which typed ``InferTensorContents`` field carries each datatype.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parse_request(payload: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(payload)
    except DecodeError as exc:
        raise InvalidArgument(f"malformed ModelInferRequest: {exc}") from exc


def request_from_proto(msg: pb.ModelInferRequest, payload: bytes | None = None) -> InferRequest:
    """Convert; ``payload`` (the bytes ``msg`` was parsed from) enables forwarding."""
    raw_contents = msg.raw_input_contents
    if raw_contents and len(raw_contents) != len(msg.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw_contents)} entries for {len(msg.inputs)} inputs"
        )
    inputs = []
    for i, tensor in enumerate(msg.inputs):
        shape = tuple(tensor.shape)
        if raw_contents:
            data: bytes = raw_contents[i]
        else:
            data = _typed_to_raw(tensor.name, tensor.datatype, shape, tensor.contents)
        inputs.append(Tensor(tensor.name, tensor.datatype, shape, data, _params(tensor.parameters)))
    outputs = tuple(RequestedOutput(o.name, _params(o.parameters)) for o in msg.outputs)
    return InferRequest(
        model=msg.model_name,
        version=msg.model_version,
        id=msg.id,
        inputs=tuple(inputs),
        outputs=outputs,
        parameters=_params(msg.parameters),
        raw=None if payload is None else RawMessage(ENCODING, payload),
    )


def request_to_proto(request: InferRequest) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(
        model_name=request.model, model_version=request.version, id=request.id
    )
    _set_params(msg.parameters, request.parameters)
    for tensor in request.inputs:
        t = msg.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        _set_params(t.parameters, tensor.parameters)
    msg.raw_input_contents.extend(bytes(t.data) for t in request.inputs)
    for out in request.outputs:
        o = msg.outputs.add(name=out.name)
        _set_params(o.parameters, out.parameters)
    return msg


def encode_request(request: InferRequest) -> bytes:
    """Serialized ModelInferRequest, reusing the original bytes when there are any."""
    if request.raw is not None and request.raw.encoding == ENCODING:
        return request.raw.payload
    return request_to_proto(request).SerializeToString()


def response_from_proto(msg: pb.ModelInferResponse) -> InferResponse:
    raw_contents = msg.raw_output_contents
    outputs = []
    for i, tensor in enumerate(msg.outputs):
        shape = tuple(tensor.shape)
        if i < len(raw_contents):
            data: bytes = raw_contents[i]
        else:
            data = _typed_to_raw(tensor.name, tensor.datatype, shape, tensor.contents)
        outputs.append(
            Tensor(tensor.name, tensor.datatype, shape, data, _params(tensor.parameters))
        )
    return InferResponse(
        model=msg.model_name,
        version=msg.model_version,
        id=msg.id,
        outputs=tuple(outputs),
        parameters=_params(msg.parameters),
    )


def response_to_proto(response: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id
    )
    _set_params(msg.parameters, response.parameters)
    for tensor in response.outputs:
        t = msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        _set_params(t.parameters, tensor.parameters)
    msg.raw_output_contents.extend(bytes(t.data) for t in response.outputs)
    return msg


def encode_response(response: InferResponse) -> bytes:
    if response.raw is not None and response.raw.encoding == ENCODING:
        return response.raw.payload
    return response_to_proto(response).SerializeToString()


def metadata_to_proto(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=meta.name,
        versions=meta.versions,
        platform=meta.platform,
        inputs=[_spec_to_proto(s) for s in meta.inputs],
        outputs=[_spec_to_proto(s) for s in meta.outputs],
    )


def metadata_from_proto(msg: pb.ModelMetadataResponse) -> ModelMetadata:
    return ModelMetadata(
        name=msg.name,
        versions=tuple(msg.versions),
        platform=msg.platform,
        inputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in msg.inputs),
        outputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in msg.outputs),
    )


def statistics_to_proto(stats: Sequence[ModelStatistics]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(model_stats=[_statistics_to_proto(s) for s in stats])


def statistics_from_proto(msg: pb.ModelStatisticsResponse) -> list[ModelStatistics]:
    return [_statistics_from_proto(s) for s in msg.model_stats]


def _spec_to_proto(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


def _statistics_to_proto(s: ModelStatistics) -> pb.ModelStatistics:
    def dur(d: Duration) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=d.count, ns=d.ns)

    return pb.ModelStatistics(
        name=s.name,
        version=s.version,
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=dur(s.success),
            fail=dur(s.fail),
            queue=dur(s.queue),
            compute_input=dur(s.compute_input),
            compute_infer=dur(s.compute_infer),
            compute_output=dur(s.compute_output),
        ),
    )


def _statistics_from_proto(s: pb.ModelStatistics) -> ModelStatistics:
    st = s.inference_stats

    def dur(d: pb.StatisticDuration) -> Duration:
        return Duration(count=d.count, ns=d.ns)

    return ModelStatistics(
        name=s.name,
        version=s.version,
        last_inference_ms=s.last_inference,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        success=dur(st.success),
        fail=dur(st.fail),
        queue=dur(st.queue),
        compute_input=dur(st.compute_input),
        compute_infer=dur(st.compute_infer),
        compute_output=dur(st.compute_output),
    )


def _typed_to_raw(
    name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> bytes:
    what = f"tensor {name!r}"
    check_datatype(datatype, what)
    count = element_count(shape, what)
    values = getattr(contents, _CONTENTS_FIELD.get(datatype, "fp32_contents"))
    if datatype == "FP16":
        raise InvalidArgument(f"{what}: FP16 data must be sent in raw_input_contents")
    if len(values) != count:
        raise InvalidArgument(
            f"{what}: shape {list(shape)} needs {count} elements, contents has {len(values)}"
        )
    if datatype == "BYTES":
        return serialize_bytes(list(values))
    return np.asarray(values, dtype=NUMPY_DTYPES[datatype]).tobytes()


def _params(params: Mapping[str, pb.InferParameter]) -> Parameters:
    if not params:
        return EMPTY_PARAMS
    out: dict[str, bool | int | float | str] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(p, which)
    return out


def _set_params(target: MutableMapping[str, pb.InferParameter], params: Parameters) -> None:
    for key, value in params.items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = str(value)
