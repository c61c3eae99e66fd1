"""The shared client side of every backend that speaks Open Inference Protocol gRPC.

Triton and our Cloud Run container both serve ``inference.GRPCInferenceService``;
they differ only in how the channel is made, what metadata goes with a call and
what the trailers say. ``OipGrpcBackend`` is the rest, once:

- the fast path: a request that arrived as a serialized ``ModelInferRequest`` is sent
  as those exact bytes, and when the frontend can pass the serialized response on
  (``ctx.accepts_raw``) it is returned undecoded;
- ``ctx.headers`` (W3C trace context) travel as gRPC metadata, the deadline as the
  call's timeout;
- gRPC errors are mapped once, by the wire table (``error_from_rpc(exc, backend=...)``);
- metadata and statistics are the ``oip_proto`` converters'.
- a restarted server is served again within ~0.5 s of being ready: the channel's
  reconnect backoff is ``grpc_channel.FAST_RECONNECT`` (gRPC's default grows to 120 s, so
  a server that was down for a few seconds went unused for seconds more).

Subclasses may override ``_open_channel`` (the default is plaintext to ``url``),
``_metadata``, ``_on_trailers`` and ``_payload``. A server that carries ModelStreamInfer itself
(Triton: decoupled models answer there only) is an ``OipGrpcStreamingBackend``: the
``StreamingBackend`` capability, on the same channel, with messages as bytes both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from infergw.gateway.core.backend import BackendBase, InferStream, Release
from infergw.gateway.core.context import RequestContext
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.errors import InferGWError
from infergw.vocab.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelStatistics,
    RawMessage,
)
from infergw.wire import grpc_channel, oip_proto, oip_stream
from infergw.wire.protowire import WireError, len_field
from infergw.wire.status import error_from_rpc

SERVICE = "/inference.GRPCInferenceService/"
HEALTH_TIMEOUT_S = 2.0
Metadata = tuple[tuple[str, str], ...]


def _identity(payload: bytes) -> bytes:
    return payload


class OipGrpcBackend(BackendBase):
    native_deadline = True  # ctx.remaining() becomes the gRPC deadline; expiry cancels the call
    reads_trailers = False  # subclasses that report timing in trailers set True (_on_trailers)

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self._channel: grpc.aio.Channel | None = None
        self._rpcs: dict[str, Any] = {}

    # -- what subclasses vary ------------------------------------------------------------
    def _open_channel(self) -> grpc.aio.Channel:
        """A new channel to ``self.url`` (called on first use, inside the event loop)."""
        return grpc_channel.aio_channel(self.url, options=grpc_channel.FAST_RECONNECT)

    async def _metadata(self, ctx: RequestContext | None) -> Metadata | None:
        """Metadata for one call; by default the request's propagation headers."""
        if ctx is None or not ctx.headers:
            return None
        return tuple(ctx.headers.items())

    def _on_trailers(self, trailers: grpc.aio.Metadata | None, ctx: RequestContext) -> None:
        """Read the backend's trailing metadata of a ModelInfer call (success or error)."""

    def _payload(self, request: InferRequest, ctx: RequestContext) -> bytes:
        """The serialized ModelInferRequest to send (by default: ``encode_request``)."""
        return oip_proto.encode_request(request)

    # -- the shared client ---------------------------------------------------------------
    def _unary(self, method: str, serializer: Any, deserializer: Any) -> Any:
        # A method may be called typed (``_call``) and as bytes (``forward_unary``).
        key = f"{method} {'raw' if serializer is _identity else 'typed'}"
        rpc = self._rpcs.get(key)
        if rpc is None:
            if self._channel is None:
                # Created lazily: a grpc.aio channel belongs to the running event loop.
                self._channel = self._open_channel()
            rpc = self._rpcs[key] = self._channel.unary_unary(
                SERVICE + method, request_serializer=serializer, response_deserializer=deserializer
            )
        return rpc

    async def _call(
        self, method: str, request: Any, response_cls: Any, timeout_s: float | None
    ) -> Any:
        rpc = self._unary(method, type(request).SerializeToString, response_cls.FromString)
        try:
            return await rpc(request, timeout=timeout_s, metadata=await self._metadata(None))
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, backend=self.name) from exc

    async def forward_unary(self, method: str, payload: bytes, timeout_s: float | None) -> bytes:
        """Call ``method`` with a serialized request; the serialized reply, undecoded."""
        rpc = self._unary(method, _identity, _identity)
        try:
            metadata = await self._metadata(None)
            reply: bytes = await rpc(payload, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, backend=self.name) from exc
        return reply

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        rpc = self._unary("ModelInfer", _identity, _identity)
        metadata = await self._metadata(ctx)
        call = rpc(self._payload(request, ctx), timeout=ctx.remaining(), metadata=metadata)
        try:
            reply: bytes = await call
        except grpc.aio.AioRpcError as exc:
            if self.reads_trailers:
                self._on_trailers(exc.trailing_metadata(), ctx)
            raise error_from_rpc(exc, backend=self.name) from exc
        if self.reads_trailers:  # an await per request otherwise spent for nothing
            self._on_trailers(await call.trailing_metadata(), ctx)
        if ctx.accepts_raw == oip_proto.ENCODING:
            return InferResponse(
                model=request.model,
                outputs=(),
                id=request.id,
                raw=RawMessage(oip_proto.ENCODING, reply),
            )
        return oip_proto.decode_response(reply)  # tensor data: views of the reply, not copies

    async def ready(self) -> bool:
        try:
            reply = await self._call(
                "ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse, HEALTH_TIMEOUT_S
            )
        except Exception:
            return False
        return bool(reply.ready)

    async def model_ready(self, model: str, version: str = "") -> bool:
        try:
            reply = await self._call(
                "ModelReady",
                pb.ModelReadyRequest(name=model, version=version),
                pb.ModelReadyResponse,
                HEALTH_TIMEOUT_S,
            )
        except Exception:
            return False
        return bool(reply.ready)

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        reply = await self._call(
            "ModelMetadata",
            pb.ModelMetadataRequest(name=model, version=version),
            pb.ModelMetadataResponse,
            HEALTH_TIMEOUT_S,
        )
        return oip_proto.metadata_from_proto(reply)

    async def model_statistics(self, model: str, version: str = "") -> list[ModelStatistics]:
        reply = await self._call(
            "ModelStatistics",
            pb.ModelStatisticsRequest(name=model, version=version),
            pb.ModelStatisticsResponse,
            HEALTH_TIMEOUT_S,
        )
        return oip_proto.statistics_from_proto(reply)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._rpcs.clear()


STREAM_METHOD = "ModelStreamInfer"
# A model reloaded with another transaction policy is streamed by its old one this long.
DECOUPLED_TTL_S = 30.0
DECOUPLED_CACHE_SIZE = 4096


def _nothing_to_release() -> None:
    return None


class OipModelStream:
    """One ModelStreamInfer call (``InferStream``): serialized messages both ways.

    Written with ``write`` from one task while another iterates the responses, which
    grpc.aio allows on a call made without a request iterator.
    """

    def __init__(self, call: grpc.aio.StreamStreamCall[bytes, bytes], backend: str) -> None:
        self._call = call
        self._backend = backend

    async def send(self, message: bytes) -> bool:
        if self._call.done():
            return False
        try:
            await self._call.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return False  # the call has ended: its status is for ``responses`` to raise
        return True

    async def close_sending(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.done_writing()

    async def responses(self) -> AsyncIterator[bytes]:
        try:
            async for reply in self._call:
                yield reply
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, backend=self._backend) from exc

    def cancel(self) -> None:
        self._call.cancel()


class OipGrpcStreamingBackend(OipGrpcBackend):
    """An OIP gRPC backend whose server streams itself: ``StreamingBackend``.

    A client's ModelStreamInfer goes out as one ModelStreamInfer per call, carrying the
    request's propagation headers and the client's deadline; nothing to admit here
    (the policies around the backend hold the slots).

    Only decoupled models need the stream (``needs_stream``, from the model's config,
    remembered for ``DECOUPLED_TTL_S``): Triton 2.51 crashes (SIGSEGV in
    TRITONBACKEND_ResponseSend, about once in a hundred rounds of 20) when a
    non-decoupled model's stream runs beside a decoupled one's, and never did in 1,000
    rounds with the non-decoupled requests sent as ModelInfer calls.
    """

    encoding = oip_proto.ENCODING

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        self._decoupled: dict[str, tuple[bool, float]] = {}  # model -> (flag, expiry)

    async def needs_stream(self, model: str) -> bool:
        now = time.monotonic()
        known = self._decoupled.get(model)
        if known is not None and known[1] > now:
            return known[0]
        try:
            reply = await self.forward_unary(
                "ModelConfig", len_field(1, model.encode()), HEALTH_TIMEOUT_S
            )
            decoupled = oip_stream.is_decoupled(reply)
        except (InferGWError, WireError):
            return True  # unknown model, or Triton away: its stream answers in its words
        if len(self._decoupled) >= DECOUPLED_CACHE_SIZE:
            self._decoupled.clear()  # names are the clients': bound what they can fill
        self._decoupled[model] = (decoupled, now + DECOUPLED_TTL_S)
        return decoupled

    async def open_stream(self, ctx: RequestContext) -> InferStream:
        rpc = self._rpcs.get(STREAM_METHOD)
        if rpc is None:
            if self._channel is None:
                self._channel = self._open_channel()
            rpc = self._rpcs[STREAM_METHOD] = self._channel.stream_stream(
                SERVICE + STREAM_METHOD,
                request_serializer=_identity,
                response_deserializer=_identity,
            )
        call = rpc(timeout=ctx.remaining(), metadata=await self._metadata(ctx))
        return OipModelStream(call, self.name)

    async def admit(self, ctx: RequestContext) -> Release:
        return _nothing_to_release
