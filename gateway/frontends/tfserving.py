"""TensorFlow Serving's ``tensorflow.serving.PredictionService`` as a gateway frontend.

Served on the gateway's gRPC server next to the OIP service, so a TF Serving client
just points at the gateway's gRPC port. Predict runs through the same
``InferenceService`` pipeline as OIP ModelInfer (decode/validate, admission, backend,
encode; Server-Timing trailer; metrics with protocol ``tfserving``), with the same
error mapping. Predict is registered without (de)serializers: the request bytes are
parsed once and kept, so a ``tfserving`` backend can forward them unchanged, and its
undecoded response is sent on as is. The gateway exposes one signature per model,
``serving_default``; Classify/Regress/MultiInference (tf.Example inputs) answer
UNIMPLEMENTED. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from infergw.gateway.core.service import PIN_HEADER, InferenceService
from infergw.gateway.frontends.grpc import GrpcFrontend, invocation_headers, serve_infer
from infergw.proto.tfs import get_model_metadata_pb2 as meta_pb
from infergw.proto.tfs import predict_pb2, prediction_service_pb2
from infergw.vocab.errors import InferGWError, InvalidArgument, Unimplemented
from infergw.vocab.types import InferRequest, InferResponse
from infergw.wire import tfserving as codec

log = logging.getLogger(__name__)

# Importing the service's file also puts it in the pool reflection answers from.
SERVICE_NAME = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
PROTOCOL = "tfserving"
UNIMPLEMENTED_METHODS = ("Classify", "Regress", "MultiInference")


def _identity(payload: bytes) -> bytes:
    return payload


def check_signature(name: str) -> None:
    if name not in ("", codec.DEFAULT_SIGNATURE):
        raise InvalidArgument(
            f"signature {name!r} not found; the gateway serves {codec.DEFAULT_SIGNATURE!r}"
        )


class TfServingServicer:
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def _decode(self, payload: bytes) -> InferRequest:
        try:
            msg = predict_pb2.PredictRequest.FromString(payload)
        except DecodeError as exc:
            raise InvalidArgument(f"malformed PredictRequest: {exc}") from exc
        check_signature(msg.model_spec.signature_name)
        return codec.request_from_proto(msg, self.service.limits.max_message_bytes, payload)

    async def predict(self, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The same lifecycle as OIP ModelInfer (``serve_infer``), TF Serving's messages."""
        return await serve_infer(
            self.service,
            context,
            payload,
            protocol=PROTOCOL,
            encoding=codec.ENCODING,
            decode=self._decode,
            encode=_encode,
        )

    async def get_model_metadata(
        self, request: meta_pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> meta_pb.GetModelMetadataResponse:
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


def _unary(handler: Any, request_cls: Any) -> grpc.RpcMethodHandler:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(request, context)
        except InferGWError as exc:
            await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)

    return grpc.unary_unary_rpc_method_handler(
        wrapped,
        request_deserializer=request_cls.FromString,
        response_serializer=lambda m: m.SerializeToString(),
    )


def _unimplemented(method: str) -> grpc.RpcMethodHandler:
    async def handler(payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        exc = Unimplemented(f"{method} (tf.Example inputs) is not served; use Predict")
        await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)
        raise AssertionError("unreachable")  # abort raises

    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=_identity, response_serializer=_identity
    )


def generic_handler(servicer: TfServingServicer) -> grpc.GenericRpcHandler:
    handlers = {
        "Predict": grpc.unary_unary_rpc_method_handler(
            servicer.predict, request_deserializer=_identity, response_serializer=_identity
        ),
        "GetModelMetadata": _unary(servicer.get_model_metadata, meta_pb.GetModelMetadataRequest),
    }
    handlers.update({m: _unimplemented(m) for m in UNIMPLEMENTED_METHODS})
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def add_tfserving_service(frontend: GrpcFrontend, service: InferenceService) -> None:
    """Serve PredictionService on the gateway's gRPC server, next to OIP."""
    frontend.add_service(generic_handler(TfServingServicer(service)), SERVICE_NAME)
