"""The Open Inference Protocol gRPC frontend (``inference.GRPCInferenceService``).

Wire-compatible with ``tritonclient.grpc``. ModelInfer is registered with no
(de)serializer: the handler receives the request's bytes, parses them once, and
keeps them so a backend speaking the same protocol can forward them unchanged;
a response the backend returns undecoded is sent on as is. The Server-Timing
split goes in the ``server-timing`` trailing metadata, errors included.

Every method is registered through one error boundary (``unary_method``,
``infer_method``, ``stream_method``; the TF Serving frontend uses them too), the
outermost code of each call, as starlette's ServerErrorMiddleware is for HTTP: an
``InferGWError`` becomes its own status; anything else INTERNAL with a generic
message carrying an error id that is logged with the traceback
(``InferenceService.error_of``); a failed call is counted and marked on its span.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from infergw.gateway.core import tracing
from infergw.gateway.core.control import ControlRouter
from infergw.gateway.core.service import PIN_HEADER, InferenceService
from infergw.gateway.frontends.control_grpc import ControlServicer
from infergw.gateway.frontends.oip_stream import StreamCall
from infergw.gateway.frontends.reflection import enable_reflection
from infergw.proto import grpc_service_pb2 as pb
from infergw.proto._pool import POOL
from infergw.vocab.errors import InferGWError, InvalidArgument
from infergw.vocab.types import InferRequest, InferResponse
from infergw.wire import grpc_channel, oip_proto
from infergw.wire.server_timing import format_server_timing
from infergw.wire.status import grpc_status

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
PROTOCOL = "grpc"
STREAM_PROTOCOL = "grpc-stream"
HEALTH_POLL_S = 2.0
TIMING_KEY = "server-timing"

Context = grpc.aio.ServicerContext
M = TypeVar("M", bound=Message)
R = TypeVar("R")  # a request as a method's handler takes it (a message, or its bytes)


def _identity(payload: bytes) -> bytes:
    return payload


class OipServicer:
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    # -- inference (ModelInfer is ``infer_method``: the lifecycle, no servicer frame) ----
    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        """Every response in the stream, errors in ``error_message``, as Triton does.

        ``oip_stream.StreamCall``: to a backend that streams (Triton) the requests go as
        one upstream stream, so each response of a decoupled model comes through; to any
        other, each runs ModelInfer's lifecycle, answered in order. Server-Timing goes
        in each response's ``server-timing`` parameter, the call's totals in the trailer.
        """
        call = StreamCall(
            self.service,
            STREAM_PROTOCOL,
            invocation_headers(context),
            context.time_remaining,
            _decode_oip,
            _encode_stream,
        )
        async for reply in call.responses(requests):
            yield reply
        context.set_trailing_metadata(((TIMING_KEY, call.trailer()),))

    # -- health and metadata ---------------------------------------------------------
    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> Message:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> Message:
        return pb.ServerReadyResponse(ready=await self.service.server_ready())

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> Message:
        pinned = _pinned(context)
        ready = await self.service.router.model_ready(request.name, request.version, pinned)
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> Message:
        control = ControlRouter(self.service.router)
        return pb.ServerMetadataResponse(
            name=self.service.server_name,
            version=self.service.version,
            extensions=await control.extensions(self.service.extensions),
        )

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> Message:
        meta = await self.service.router.model_metadata(
            request.name, request.version, _pinned(context)
        )
        return oip_proto.metadata_to_proto(meta)


def invocation_headers(context: Context) -> dict[str, str]:
    """The call's text metadata, keys lower-cased (what ``new_context`` reads)."""
    return {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


def _decode_oip(payload: bytes) -> InferRequest:
    return oip_proto.request_from_proto(oip_proto.parse_request(payload), payload)


def _encode_oip(response: InferResponse, request: InferRequest) -> bytes:
    return oip_proto.encode_response(response)


def _encode_stream(response: InferResponse, request: InferRequest) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(infer_response=oip_proto.response_to_proto(response))


def _pinned(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == PIN_HEADER and isinstance(value, str):
            return value
    return None


# -- the error boundary ---------------------------------------------------------------------


async def abort(
    context: Context, error: InferGWError, trailer: Sequence[tuple[str, str]] = ()
) -> NoReturn:
    """End the call with ``error``'s status and message (plus ``retry-after`` if it has one)."""
    metadata = tuple(trailer)
    if error.retry_after_s is not None:
        metadata += (("retry-after", str(max(1, math.ceil(error.retry_after_s)))),)
    await context.abort(grpc_status(error), error.message, metadata)


def parser(request_cls: type[M]) -> Callable[[bytes], M]:
    """Parse a request message; malformed bytes are INVALID_ARGUMENT, in our words."""

    def parse(payload: bytes) -> M:
        try:
            return request_cls.FromString(payload)
        except DecodeError as exc:
            raise InvalidArgument(f"malformed {request_cls.DESCRIPTOR.name}") from exc

    return parse


def unary_method(
    service: InferenceService,
    protocol: str,
    method: str,
    handler: Callable[[M, Context], Awaitable[Message]],
    parse: Callable[[bytes], M],
    model_of: Callable[[M], str] | None = None,
) -> grpc.RpcMethodHandler:
    """A typed unary method behind the boundary, under a SERVER span of its own.

    The request is parsed (``parse``, usually ``parser(RequestType)``) and the reply
    serialized inside the boundary, so neither can fail outside it. ``model_of`` names
    the model a request is about, for the metric label of a failed call.
    """

    async def serialized(request: M, context: Context) -> bytes:
        return (await handler(request, context)).SerializeToString()

    return _guarded_unary(service, protocol, method, serialized, parse, model_of)


def raw_unary_method(
    service: InferenceService,
    protocol: str,
    method: str,
    handler: Callable[[bytes, Context], Awaitable[bytes]],
    model_of: Callable[[bytes], str] | None = None,
) -> grpc.RpcMethodHandler:
    """``unary_method`` for a handler that forwards bytes (Triton's control calls)."""
    return _guarded_unary(service, protocol, method, handler, _identity, model_of)


def _guarded_unary(
    service: InferenceService,
    protocol: str,
    method: str,
    handler: Callable[[R, Context], Awaitable[bytes]],
    parse: Callable[[bytes], R],
    model_of: Callable[[R], str] | None,
) -> grpc.RpcMethodHandler:
    async def guarded(payload: bytes, context: Context) -> bytes:
        model = ""
        with tracing.call_span(method, protocol, invocation_headers(context)) as span:
            try:
                request = parse(payload)
                if model_of is not None:
                    model = model_of(request)
                return await handler(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                error = service.error_of(exc, protocol, method, model)
                tracing.record_error(span, exc)
        service.count_failed(model, protocol, error.grpc_code)
        await abort(context, error)

    return grpc.unary_unary_rpc_method_handler(
        guarded, request_deserializer=_identity, response_serializer=_identity
    )


def infer_method(
    service: InferenceService,
    protocol: str,
    method: str,
    *,
    encoding: str,
    decode: Callable[[bytes], InferRequest],
    encode: Callable[[InferResponse, InferRequest], bytes],
) -> grpc.RpcMethodHandler:
    """A unary inference method, raw request bytes in, raw response bytes out.

    Shared by every gRPC inference frontend (OIP ModelInfer, TF Serving Predict): the
    client's deadline and trace context go into the request's context, the lifecycle
    is ``InferenceService.serve`` (which counts, times, traces and maps the request's
    errors), and the ``server-timing`` trailer goes out on every outcome (QueueFull
    adds ``retry-after``). ``encoding`` names the raw form a backend may hand back
    untouched. The boundary here catches only what escapes the lifecycle; no span or
    context manager of its own, no extra frame: this is the hot path.
    """

    async def guarded(payload: bytes, context: Context) -> bytes:
        try:
            headers = invocation_headers(context)
            ctx = service.new_context(protocol, headers, context.time_remaining())
            ctx.accepts_raw = encoding
            result, entries = await service.serve(ctx, payload, decode, encode)
            trailer = ((TIMING_KEY, format_server_timing(entries)),)
            if isinstance(result, InferGWError):
                await abort(context, result, trailer)
            context.set_trailing_metadata(trailer)
            return result
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            error = service.error_of(exc, protocol, method)
        service.count_failed("", protocol, error.grpc_code)
        await abort(context, error)

    return grpc.unary_unary_rpc_method_handler(
        guarded, request_deserializer=_identity, response_serializer=_identity
    )


def stream_method(
    service: InferenceService,
    protocol: str,
    method: str,
    handler: Callable[[AsyncIterator[bytes], Context], AsyncIterator[bytes]],
) -> grpc.RpcMethodHandler:
    """A bidirectional stream of raw messages behind the boundary, one span for the stream.

    Each message's own errors are answered in the stream by the handler; an exception
    escaping it ends the stream with a status, as for a unary call.
    """

    async def guarded(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        with tracing.call_span(method, protocol, invocation_headers(context)) as span:
            try:
                async for reply in handler(requests, context):
                    yield reply
                return
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                error = service.error_of(exc, protocol, method)
                tracing.record_error(span, exc)
        service.count_failed("", protocol, error.grpc_code)
        await abort(context, error)

    return grpc.stream_stream_rpc_method_handler(
        guarded, request_deserializer=_identity, response_serializer=_identity
    )


def generic_handler(servicer: OipServicer) -> grpc.GenericRpcHandler:
    service = servicer.service

    def unary(
        method: str,
        handler: Callable[[M, Context], Awaitable[Message]],
        request_cls: type[M],
        model_of: Callable[[M], str] | None = None,
    ) -> grpc.RpcMethodHandler:
        return unary_method(service, PROTOCOL, method, handler, parser(request_cls), model_of)

    s = servicer
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "ModelInfer": infer_method(
                service,
                PROTOCOL,
                "ModelInfer",
                encoding=oip_proto.ENCODING,
                decode=_decode_oip,
                encode=_encode_oip,
            ),
            "ModelStreamInfer": stream_method(
                service, STREAM_PROTOCOL, "ModelStreamInfer", s.model_stream_infer
            ),
            "ServerLive": unary("ServerLive", s.server_live, pb.ServerLiveRequest),
            "ServerReady": unary("ServerReady", s.server_ready, pb.ServerReadyRequest),
            "ModelReady": unary(
                "ModelReady", s.model_ready, pb.ModelReadyRequest, lambda r: r.name
            ),
            "ServerMetadata": unary("ServerMetadata", s.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary(
                "ModelMetadata", s.model_metadata, pb.ModelMetadataRequest, lambda r: r.name
            ),
            **{
                method: raw_unary_method(service, PROTOCOL, method, m.handler, m.model_of)
                for method, m in ControlServicer(service).methods().items()
            },
        },
    )


class GrpcFrontend:
    """The gRPC server: OIP service, grpc.health.v1 (following backend readiness), reflection."""

    def __init__(
        self,
        service: InferenceService,
        max_message_bytes: int,
        health_poll_s: float = HEALTH_POLL_S,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        options: Sequence[grpc_channel.Option] = (),
    ) -> None:
        self.service = service
        self.health_poll_s = health_poll_s
        self.server = grpc.aio.server(
            options=grpc_channel.limited_server_options(max_message_bytes, options),
            interceptors=interceptors,
        )
        self.server.add_generic_rpc_handlers((generic_handler(OipServicer(service)),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._reflected = [SERVICE_NAME, health.SERVICE_NAME]  # + reflection's own, both versions
        self._health_task: asyncio.Task[None] | None = None

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        """Listen on ``address`` (TLS with ``credentials``); returns the bound port."""
        if credentials is None:
            port = self.server.add_insecure_port(address)
        else:
            port = self.server.add_secure_port(address, credentials)
        if port == 0:
            raise OSError(f"cannot bind gRPC to {address}")
        return port

    def add_service(self, handler: grpc.GenericRpcHandler, service_name: str) -> None:
        """Serve another gRPC service on the same port (listed by reflection too)."""
        self.server.add_generic_rpc_handlers((handler,))
        self._reflected.append(service_name)

    async def start(self) -> None:
        enable_reflection(self.server, self._reflected, POOL)
        await self.server.start()
        self._health_task = asyncio.create_task(self._follow_readiness())

    async def drain(self) -> None:
        """grpc.health.v1 says NOT_SERVING from now on, while calls are still served.

        Readiness polling stops, and the servicer ignores later updates (its graceful
        shutdown), so a balancer's health check steers new calls elsewhere.
        """
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float = 1.0) -> None:
        """Drain, refuse new calls, give those in flight ``grace_s`` to finish, cancel the rest."""
        await self.drain()
        await self.server.stop(grace_s)

    async def _follow_readiness(self) -> None:
        """grpc.health.v1 follows the backends' readiness, polled every ``health_poll_s``.

        A readiness check that fails is NOT_SERVING (logged when it starts failing),
        never the end of this task: health would otherwise freeze at its last value.
        """
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        failing = False
        while True:
            try:
                ready = await self.service.server_ready()
                failing = False
            except Exception:
                if not failing:
                    log.exception("readiness check failed; health reports NOT_SERVING")
                ready, failing = False, True
            status = serving if ready else not_serving
            for name in ("", SERVICE_NAME):
                await self.health.set(name, status)
            await asyncio.sleep(self.health_poll_s)
