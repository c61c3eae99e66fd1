"""TensorFlow Serving (``tensorflow.serving.PredictionService``) as a backend kind.

Predict carries the request; GetModelMetadata gives model metadata (the configured
signature's inputs and outputs) and readiness. Like the OIP gRPC backends: raw
(de)serializers on the hot path, so a request that arrived as a serialized
PredictRequest (the gateway's TF Serving frontend) is sent as those exact bytes and,
when the frontend can pass it on, the reply is returned undecoded; W3C trace context
travels as gRPC metadata; the deadline is the call's timeout; gRPC errors are mapped
once. The messages are infergw's own copies in its private descriptor pool: no
TensorFlow needed.

Config::

    backends:
      tfs: {kind: tfserving, url: "127.0.0.1:8500", signature_name: serving_default}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from infergw.gateway.core.backend import BackendBase
from infergw.gateway.core.context import RequestContext
from infergw.proto.tfs import get_model_metadata_pb2 as meta_pb
from infergw.proto.tfs import predict_pb2
from infergw.vocab.errors import BackendError, InferGWError, InvalidArgument
from infergw.vocab.types import InferRequest, InferResponse, ModelMetadata, RawMessage
from infergw.wire import grpc_channel
from infergw.wire import tfserving as codec
from infergw.wire.status import error_from_rpc

SERVICE = "/tensorflow.serving.PredictionService/"
HEALTH_TIMEOUT_S = 2.0
# Codes that prove the server read a PredictionService call (an empty metadata request).
_ANSWERED = (
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
)


def _identity(payload: bytes) -> bytes:
    return payload


class TfServingBackend(BackendBase):
    native_deadline = True  # ctx.remaining() becomes the gRPC deadline; expiry cancels the call

    def __init__(self, name: str, url: str, signature_name: str = codec.DEFAULT_SIGNATURE) -> None:
        self.name = name
        self.url = url
        self.signature_name = signature_name
        self._channel: grpc.aio.Channel | None = None
        self._rpcs: dict[str, Any] = {}

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> TfServingBackend:
        url = options.get("url")
        if not isinstance(url, str) or not url:
            raise InvalidArgument(f"backend {name!r}: 'url' (host:port of TF Serving's gRPC)")
        signature = options.get("signature_name", codec.DEFAULT_SIGNATURE)
        if not isinstance(signature, str) or not signature:
            raise InvalidArgument(f"backend {name!r}: 'signature_name' must be a non-empty string")
        unknown = set(options) - {"url", "signature_name"}
        if unknown:
            raise InvalidArgument(f"backend {name!r}: unknown options {sorted(unknown)}")
        return cls(name, url, signature)

    def _unary(self, method: str) -> Any:
        rpc = self._rpcs.get(method)
        if rpc is None:
            if self._channel is None:
                # Created lazily: a grpc.aio channel belongs to the running event loop.
                self._channel = grpc_channel.aio_channel(self.url)
            rpc = self._rpcs[method] = self._channel.unary_unary(
                SERVICE + method, request_serializer=_identity, response_deserializer=_identity
            )
        return rpc

    def _encode(self, request: InferRequest) -> bytes:
        """The client's own bytes when they mean the same call (same signature), else encode."""
        raw = request.raw
        if (
            raw is not None
            and raw.encoding == codec.ENCODING
            and self.signature_name == codec.DEFAULT_SIGNATURE
        ):
            return raw.payload
        return codec.request_to_proto(request, self.signature_name).SerializeToString()

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        metadata = tuple(ctx.headers.items()) or None
        call = self._unary("Predict")(
            self._encode(request), timeout=ctx.remaining(), metadata=metadata
        )
        try:
            reply: bytes = await call
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, backend=self.name) from exc
        if ctx.accepts_raw == codec.ENCODING:
            raw = RawMessage(codec.ENCODING, reply)
            return InferResponse(model=request.model, outputs=(), id=request.id, raw=raw)
        try:
            msg = predict_pb2.PredictResponse.FromString(reply)
            return codec.response_from_proto(msg, request, grpc_channel.MAX_MESSAGE_BYTES)
        except (DecodeError, InferGWError) as exc:
            detail = exc.message if isinstance(exc, InferGWError) else str(exc)
            raise BackendError(
                f"backend {self.name!r} sent a bad PredictResponse: {detail}"
            ) from exc

    async def _metadata(self, model: str, version: str) -> meta_pb.GetModelMetadataResponse:
        request = meta_pb.GetModelMetadataRequest(metadata_field=[codec.SIGNATURE_DEF])
        codec.set_spec(request.model_spec, model, version, "")
        try:
            reply = await self._unary("GetModelMetadata")(
                request.SerializeToString(), timeout=HEALTH_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, backend=self.name) from exc
        return meta_pb.GetModelMetadataResponse.FromString(reply)

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        reply = await self._metadata(model, version)
        return codec.metadata_from_proto(reply, model, self.signature_name)

    async def model_ready(self, model: str, version: str = "") -> bool:
        try:
            await self._metadata(model, version)
        except InferGWError:
            return False
        return True

    async def ready(self) -> bool:
        """PredictionService has no health call: the server is up if it answers one."""
        try:
            await self._unary("GetModelMetadata")(b"", timeout=HEALTH_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return exc.code() in _ANSWERED
        return True

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._rpcs.clear()
