"""The Open Inference Protocol gRPC frontend (``inference.GRPCInferenceService``).

Wire-compatible with ``tritonclient.grpc``. ModelInfer is registered with no
(de)serializer: the handler receives the request's bytes, parses them once, and
keeps them so a backend speaking the same protocol can forward them unchanged;
a response the backend returns undecoded is sent on as is. The Server-Timing
split goes in the ``server-timing`` trailing metadata, errors included.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from infergw.gateway.core.service import InferenceService
from infergw.proto import grpc_service_pb2 as pb
from infergw.proto._pool import POOL
from infergw.vocab.errors import InferGWError, QueueFull
from infergw.vocab.timing import Timings
from infergw.vocab.types import InferRequest, InferResponse
from infergw.wire import oip_proto
from infergw.wire.server_timing import format_server_timing

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
HEALTH_POLL_S = 2.0


def _identity(payload: bytes) -> bytes:
    return payload


class OipServicer:
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    # -- inference ---------------------------------------------------------------
    async def model_infer(self, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await serve_infer(
            self.service,
            context,
            payload,
            protocol="grpc",
            encoding=oip_proto.ENCODING,
            decode=_decode_oip,
            encode=_encode_oip,
        )

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request is answered in order; errors go in ``error_message``, as Triton does."""
        headers = invocation_headers(context)
        async for payload in requests:
            ctx = self.service.new_context("grpc-stream", headers)
            model, status = "", "OK"
            try:
                with ctx.timings.measure("decode"):
                    self.service.check_size(len(payload))
                    request = oip_proto.request_from_proto(oip_proto.parse_request(payload))
                    model = request.model
                    self.service.validate(request)
                response = await self.service.infer(request, ctx)
                with ctx.timings.measure("encode"):
                    reply = pb.ModelStreamInferResponse(
                        infer_response=oip_proto.response_to_proto(response)
                    )
            except InferGWError as exc:
                status = exc.grpc_code
                reply = pb.ModelStreamInferResponse(error_message=exc.message)
            entries = self.service.finish(model, ctx, status)
            if status == "OK":
                timing = reply.infer_response.parameters["server-timing"]
                timing.string_param = format_server_timing(entries)
            yield reply

    # -- health and metadata ---------------------------------------------------------
    async def server_live(
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.service.server_ready())

    async def model_ready(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        pinned = _pinned(context)
        ready = await self.service.router.model_ready(request.name, request.version, pinned)
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=self.service.server_name,
            version=self.service.version,
            extensions=self.service.extensions,
        )

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        meta = await self.service.router.model_metadata(
            request.name, request.version, _pinned(context)
        )
        return oip_proto.metadata_to_proto(meta)

    async def model_statistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        stats = await self.service.router.model_statistics(
            request.name, request.version, _pinned(context)
        )
        return oip_proto.statistics_to_proto(stats)

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        reply = pb.RepositoryIndexResponse()
        for name in self.service.router.model_names():
            ready = await self.service.router.model_ready(name)
            if request.ready and not ready:
                continue
            reply.models.add(name=name, state="READY" if ready else "UNAVAILABLE")
        return reply


def invocation_headers(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's text metadata, keys lower-cased (what ``new_context`` reads)."""
    return {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


def _decode_oip(payload: bytes) -> InferRequest:
    return oip_proto.request_from_proto(oip_proto.parse_request(payload), payload)


def _encode_oip(response: InferResponse, request: InferRequest) -> bytes:
    return oip_proto.encode_response(response)


async def serve_infer(
    service: InferenceService,
    context: grpc.aio.ServicerContext,
    payload: bytes,
    *,
    protocol: str,
    encoding: str,
    decode: Callable[[bytes], InferRequest],
    encode: Callable[[InferResponse, InferRequest], bytes],
) -> bytes:
    """One unary inference RPC, raw request bytes in, raw response bytes out.

    The lifecycle every gRPC inference frontend shares (OIP ModelInfer, TF Serving
    Predict): the client's deadline and trace context, decode + validate, the routed
    call, encode, and the ``server-timing`` trailer on every outcome — errors mapped
    once to their gRPC status (QueueFull adds ``retry-after``), a cancelled call still
    counted. ``encoding`` names the raw form a backend may hand back untouched.
    Phases are timed with perf_counter pairs, not context managers: this is the
    per-request hot path and every microsecond here is gateway overhead.
    """
    timings = Timings()
    ctx = service.new_context(
        protocol, invocation_headers(context), context.time_remaining(), timings
    )
    ctx.accepts_raw = encoding
    model, status = "", "CANCELLED"
    try:
        try:
            service.check_size(len(payload))
            request = decode(payload)
            model = request.model
            service.validate(request)
        finally:
            timings.add_since("decode", timings.started)
        with service.server_span(model, ctx):
            response = await service.infer(request, ctx)
            encode_t0 = time.perf_counter()
            body = encode(response, request)
            timings.add_since("encode", encode_t0)
        status = "OK"
    except InferGWError as exc:
        status = exc.grpc_code
        trailer = [("server-timing", format_server_timing(service.finish(model, ctx, status)))]
        if isinstance(exc, QueueFull):
            trailer.append(("retry-after", str(math.ceil(exc.retry_after_s))))
        await context.abort(grpc.StatusCode[exc.grpc_code], exc.message, tuple(trailer))
    except Exception:
        status = "INTERNAL"
        log.exception("unexpected error in %s inference for model %r", protocol, model)
        trailer_value = format_server_timing(service.finish(model, ctx, status))
        await context.abort(
            grpc.StatusCode.INTERNAL, "internal error", (("server-timing", trailer_value),)
        )
    finally:
        if status == "CANCELLED":  # the client went away; still count it
            service.finish(model, ctx, status)
    context.set_trailing_metadata(
        (("server-timing", format_server_timing(service.finish(model, ctx, status))),)
    )
    return body


def _pinned(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "x-infergw-backend" and isinstance(value, str):
            return value
    return None


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _unary(handler: Handler, request_cls: Any) -> grpc.RpcMethodHandler:
    """A typed unary handler whose core errors become gRPC statuses."""

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


def generic_handler(servicer: OipServicer) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                servicer.model_infer, request_deserializer=_identity, response_serializer=_identity
            ),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                servicer.model_stream_infer,
                request_deserializer=_identity,
                response_serializer=lambda m: m.SerializeToString(),
            ),
            "ServerLive": _unary(servicer.server_live, pb.ServerLiveRequest),
            "ServerReady": _unary(servicer.server_ready, pb.ServerReadyRequest),
            "ModelReady": _unary(servicer.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": _unary(servicer.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": _unary(servicer.model_metadata, pb.ModelMetadataRequest),
            "ModelStatistics": _unary(servicer.model_statistics, pb.ModelStatisticsRequest),
            "RepositoryIndex": _unary(servicer.repository_index, pb.RepositoryIndexRequest),
        },
    )


def _register_reflection_descriptors() -> None:
    """Reflection answers from our private pool; it needs health's and its own files too."""
    for module in (health_pb2, reflection_pb2):
        try:
            POOL.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)


class GrpcFrontend:
    """The gRPC server: OIP service, grpc.health.v1 (following backend readiness), reflection."""

    def __init__(self, service: InferenceService, max_message_bytes: int) -> None:
        self.service = service
        # gRPC's own limit sits above ours so that our check, which names the limit, answers.
        limit = max_message_bytes + 1024 * 1024
        self.server = grpc.aio.server(
            options=(
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 1 << 30),
                ("grpc.so_reuseport", 0),
            )
        )
        self.server.add_generic_rpc_handlers((generic_handler(OipServicer(service)),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._reflected = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
        self._health_task: asyncio.Task[None] | None = None

    def add_port(self, address: str) -> int:
        port = self.server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot bind gRPC to {address}")
        return port

    def add_service(self, handler: grpc.GenericRpcHandler, service_name: str) -> None:
        """Serve another gRPC service on the same port (listed by reflection too)."""
        self.server.add_generic_rpc_handlers((handler,))
        self._reflected.append(service_name)

    async def start(self) -> None:
        _register_reflection_descriptors()
        reflection.enable_server_reflection(tuple(self._reflected), self.server, pool=POOL)
        await self.server.start()
        self._health_task = asyncio.create_task(self._follow_readiness())

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        await self.server.stop(grace_s)

    async def _follow_readiness(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while True:
            status = serving if await self.service.server_ready() else not_serving
            for name in ("", SERVICE_NAME):
                await self.health.set(name, status)
            await asyncio.sleep(HEALTH_POLL_S)
