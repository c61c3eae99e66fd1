"""TensorFlow Serving's ``tensorflow.serving.PredictionService`` as a gateway frontend.

Served on the gateway's gRPC server next to the OIP service, so a TF Serving client
just points at the gateway's gRPC port. Predict runs through the same
``InferenceService`` pipeline as OIP ModelInfer (decode/validate, admission, backend,
encode; Server-Timing trailer; metrics with protocol ``tfserving``), and every
method sits behind the same error boundary (``infergw.gateway.frontends.grpc``).
Predict is registered without (de)serializers: the request bytes are parsed once
and kept, so a ``tfserving`` backend can forward them unchanged, and its undecoded
response is sent on as is. The gateway exposes one signature per model,
``serving_default``; Classify/Regress/MultiInference (tf.Example inputs) answer
UNIMPLEMENTED. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError, Message

from infergw.gateway.core.service import PIN_HEADER, InferenceService
from infergw.gateway.frontends.grpc import (
    Context,
    GrpcFrontend,
    infer_method,
    invocation_headers,
    parser,
    unary_method,
)
from infergw.proto.tfs import get_model_metadata_pb2 as meta_pb
from infergw.proto.tfs import predict_pb2, prediction_service_pb2
from infergw.vocab.errors import InvalidArgument, Unimplemented
from infergw.vocab.types import InferRequest, InferResponse
from infergw.wire import tfserving as codec

log = logging.getLogger(__name__)

# Importing the service's file also puts it in the pool reflection answers from.
SERVICE_NAME = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
PROTOCOL = "tfserving"
UNIMPLEMENTED_METHODS = ("Classify", "Regress", "MultiInference")


def check_signature(name: str) -> None:
    if name not in ("", codec.DEFAULT_SIGNATURE):
        raise InvalidArgument(
            f"signature {name!r} not found; the gateway serves {codec.DEFAULT_SIGNATURE!r}"
        )


class TfServingServicer:
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def decode(self, payload: bytes) -> InferRequest:
        """Predict's request; Predict runs the lifecycle of OIP ModelInfer (``infer_method``)."""
        try:
            msg = predict_pb2.PredictRequest.FromString(payload)
        except DecodeError as exc:
            raise InvalidArgument(f"malformed PredictRequest: {exc}") from exc
        check_signature(msg.model_spec.signature_name)
        return codec.request_from_proto(msg, self.service.limits.max_message_bytes, payload)

    async def get_model_metadata(
        self, request: meta_pb.GetModelMetadataRequest, context: Context
    ) -> Message:
        """TF Serving's rules: ``signature_def`` must be asked for, and is all there is."""
        fields = list(request.metadata_field)
        if not fields:
            raise InvalidArgument("GetModelMetadataRequest must specify at least one field")
        unsupported = [f for f in fields if f != codec.SIGNATURE_DEF]
        if unsupported:
            raise InvalidArgument(f"metadata field {unsupported[0]!r} is not supported")
        spec = request.model_spec
        if not spec.name:
            raise InvalidArgument("model_spec.name is required")
        version = codec.version_from_spec(spec)
        pinned = invocation_headers(context).get(PIN_HEADER) or None
        meta = await self.service.router.model_metadata(spec.name, version, pinned)
        return codec.metadata_to_proto(meta, version)


def _encode(response: InferResponse, request: InferRequest) -> bytes:
    if response.raw is not None and response.raw.encoding == codec.ENCODING:
        return response.raw.payload
    return codec.response_to_proto(response, request.outputs).SerializeToString()


def _unimplemented(method: str) -> Callable[[Empty, Context], Awaitable[Message]]:
    async def refuse(request: Empty, context: Context) -> Message:
        raise Unimplemented(f"{method} (tf.Example inputs) is not served; use Predict")

    return refuse


def _ignored(payload: bytes) -> Empty:
    """The request of an unimplemented method is not parsed: any bytes are UNIMPLEMENTED."""
    return Empty()


def generic_handler(servicer: TfServingServicer) -> grpc.GenericRpcHandler:
    service, p = servicer.service, PROTOCOL
    handlers = {
        "Predict": infer_method(
            service, p, "Predict", encoding=codec.ENCODING, decode=servicer.decode, encode=_encode
        ),
        "GetModelMetadata": unary_method(
            service,
            p,
            "GetModelMetadata",
            servicer.get_model_metadata,
            parser(meta_pb.GetModelMetadataRequest),
            lambda r: r.model_spec.name,
        ),
    }
    for method in UNIMPLEMENTED_METHODS:  # the request is not looked at
        handlers[method] = unary_method(service, p, method, _unimplemented(method), _ignored)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def add_tfserving_service(frontend: GrpcFrontend, service: InferenceService) -> None:
    """Serve PredictionService on the gateway's gRPC server, next to OIP."""
    frontend.add_service(generic_handler(TfServingServicer(service)), SERVICE_NAME)
